"""ImageNet weights through torchvision's weights API, with an offline story.

Files live in torch's hub cache (`$TORCH_HOME/hub/checkpoints`, by default
~/.cache/torch/hub/checkpoints) under the names torchvision gives them. With internet a
missing file is downloaded once; offline (no route, or CXR_SWEEP_OFFLINE=1) a missing file is
one clear error naming the file, the cache and the command that fetches it elsewhere. Files
load with `weights_only=True` and `strict=True`, so a wrong or tampered file cannot run code
or half-load.

    python -m trainables.weights fetch resnet50 densenet121   # on a machine with internet
    python -m trainables.weights where resnet50               # which file, present or not
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torchvision.models import get_model_weights

OFFLINE_ENV = "CXR_SWEEP_OFFLINE"


class WeightsUnavailable(RuntimeError):
    """The ImageNet weights file is not in the cache and cannot be downloaded here."""


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_file(backbone: str) -> tuple[Path, str]:
    """(cache path, download URL) of the backbone's default ImageNet weights."""
    url = get_model_weights(backbone).DEFAULT.url
    return cache_dir() / Path(url).name, url


def _missing(backbone: str, path: Path, why: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"ImageNet weights for {backbone} are not in the cache and {why}: expected {path.name} in "
        f"{path.parent}. On a machine with internet run `python -m trainables.weights fetch {backbone}` "
        f"(or `python -m sweeper.weights --spec SPEC` for every backbone a spec needs), then copy the file "
        f"to {path.parent} here (the cache follows TORCH_HOME).")


def fetch(backbone: str, progress: bool = True) -> Path:
    """The cached weights file of `backbone`, downloaded first if missing."""
    path, url = weights_file(backbone)
    if path.is_file():
        return path
    if os.environ.get(OFFLINE_ENV) == "1":
        raise _missing(backbone, path, f"{OFFLINE_ENV}=1 forbids downloading")
    try:
        torch.hub.download_url_to_file(url, str(path), progress=progress)
    except OSError as exc:  # URLError, timeouts, DNS failures are all OSErrors
        raise _missing(backbone, path, f"downloading {url} failed ({exc})") from exc
    return path


def load_imagenet(model: nn.Module, backbone: str) -> None:
    """Load the backbone's ImageNet weights into the torchvision `model`, every key exactly."""
    path = fetch(backbone, progress=False)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # unpickling refused, truncated file, wrong keys or shapes
        detail = " ".join(str(exc).split())[:300]  # one line, however long the key list
        raise WeightsUnavailable(f"{path} is not a usable {backbone} ImageNet weights file "
                                 f"({type(exc).__name__}: {detail}); delete it and fetch it again") from exc


def report(backbones: list[str], download: bool, missing_is_error: bool) -> int:
    """Fetch (or only locate) each backbone's file and print where it is; the exit status."""
    failed = 0
    for backbone in backbones:
        try:
            path = fetch(backbone) if download else weights_file(backbone)[0]
        except (WeightsUnavailable, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        failed += missing_is_error and not path.is_file()
        print(f"{backbone}: {path} ({'present' if path.is_file() else 'missing'})")
    return 2 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainables.weights", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("fetch", "where"))
    parser.add_argument("backbones", nargs="+")
    args = parser.parse_args(argv)
    return report(args.backbones, download=args.action == "fetch", missing_is_error=False)

if __name__ == "__main__":
    sys.exit(main())
