"""ImageNet weights as torchvision publishes them, built by torchvision's own weights API.

Files live in torch's hub cache (`$TORCH_HOME/hub/checkpoints`, by default
~/.cache/torch/hub/checkpoints) under the names torchvision gives them. A name carries the first
hex digits of the file's SHA-256 (torch.hub's convention); a file whose digest does not start
with them is refused before it is read, with its path and what to do. The model is then built
by torchvision itself (`get_model(name, weights=DEFAULT)`), so every backbone gets exactly the
state torchvision gives, strictly, including DenseNet's 2017 key names (`denselayer1.norm.1`)
that torchvision renames as it loads. torch.hub unpickles those files with `weights_only=False`;
we force the weights-only unpickler, so a file cannot run code however it is named.

With internet a missing file is downloaded once (and its hash checked as it arrives); offline
(no route, or CXR_SWEEP_OFFLINE=1) a missing file is one clear error naming the file, the cache
and the command that fetches it elsewhere.

    cxr-sweep weights --backbone resnet50 densenet121         # on a machine with internet
    cxr-sweep weights --backbone resnet50 --check             # which file, present or not

`python -m trainables.weights fetch|where BACKBONE...` is the older form of the same, kept.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import get_model_weights
from vocab import cli
from vocab.errors import CxrSweepError

OFFLINE_ENV = "CXR_SWEEP_OFFLINE"
# Accept a cached file whose SHA-256 does not match its published name (with a warning; its real
# digest is what the results DB records). For weights converted by hand, and for tests, whose
# files in torchvision's layout cannot carry torchvision's digests.
UNVERIFIED_ENV = "CXR_SWEEP_UNVERIFIED_WEIGHTS"
WEIGHTS_ONLY_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"  # torch.load's switch that no call site can override
_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime): SHA-256, so a file is hashed once


class WeightsUnavailable(CxrSweepError, RuntimeError):
    """The ImageNet weights file is missing, damaged or not the published one."""


@dataclass(frozen=True)
class WeightsFile:
    """One backbone's published ImageNet weights: where torchvision downloads it from and caches it."""

    backbone: str
    url: str

    @property
    def path(self) -> Path:
        return cache_dir() / Path(self.url).name

    @property
    def published_prefix(self) -> str:
        """The first hex digits of the published file's SHA-256, from its name (torch.hub.HASH_REGEX)."""
        found = torch.hub.HASH_REGEX.search(self.path.name)
        return found.group(1) if found else ""


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def published(backbone: str) -> WeightsFile:
    """The backbone's default ImageNet weights as torchvision publishes them."""
    return WeightsFile(backbone, get_model_weights(backbone).DEFAULT.url)


def weights_file(backbone: str) -> tuple[Path, str]:
    """(cache path, download URL) of the backbone's default ImageNet weights."""
    wanted = published(backbone)
    return wanted.path, wanted.url


def sha256(path: Path) -> str:
    """The file's SHA-256, computed once per process for an unchanged file (a ResNet50 file takes 0.2 s)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        with path.open("rb") as handle:
            _digests[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _digests[key]


def verify(wanted: WeightsFile) -> str:
    """The cached file's SHA-256 once it matches the published name's prefix; else WeightsUnavailable."""
    digest = sha256(wanted.path)
    if digest.startswith(wanted.published_prefix):
        return digest
    problem = (f"{wanted.path} is not the file torchvision publishes for {wanted.backbone}: its SHA-256 is "
               f"{digest[:16]}..., the published file's starts with {wanted.published_prefix}")
    if os.environ.get(UNVERIFIED_ENV) == "1":
        warnings.warn(f"{problem}; used anyway because {UNVERIFIED_ENV}=1", stacklevel=2)
        return digest
    raise WeightsUnavailable(f"{problem} (damaged, or saved from another model). Delete it and run "
                             f"`python -m trainables.weights fetch {wanted.backbone}` (offline: fetch it on a "
                             f"machine with internet and copy it to {wanted.path.parent}); weights converted by "
                             f"hand can be allowed with {UNVERIFIED_ENV}=1")


def _missing(backbone: str, path: Path, why: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"ImageNet weights for {backbone} are not in the cache and {why}: expected {path.name} in "
        f"{path.parent}. On a machine with internet run `python -m trainables.weights fetch {backbone}` "
        f"(or `python -m sweeper.weights --spec SPEC` for every backbone a spec needs), then copy the file "
        f"to {path.parent} here (the cache follows TORCH_HOME).")


def fetch(backbone: str, progress: bool = True) -> Path:
    """The cached weights file of `backbone`, downloaded first if missing (its hash checked on arrival)."""
    return fetch_file(published(backbone), progress)


def fetch_file(wanted: WeightsFile, progress: bool = True) -> Path:
    path, backbone = wanted.path, wanted.backbone
    if path.is_file():
        return path
    if os.environ.get(OFFLINE_ENV) == "1":
        raise _missing(backbone, path, f"{OFFLINE_ENV}=1 forbids downloading")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(wanted.url, str(path), hash_prefix=wanted.published_prefix or None,
                                       progress=progress)
    except OSError as exc:  # URLError, timeouts, DNS failures are all OSErrors
        raise _missing(backbone, path, f"downloading {wanted.url} failed ({exc})") from exc
    except RuntimeError as exc:  # torch.hub: "invalid hash value" (the download is deleted)
        raise WeightsUnavailable(f"downloading {wanted.url} gave a file whose SHA-256 does not start with "
                                 f"{wanted.published_prefix} ({exc}); try again") from exc
    return path


@contextlib.contextmanager
def _weights_only_loads():
    """torch.load with weights_only=True inside, whatever the caller passes (torch.hub passes False)."""
    before = os.environ.get(WEIGHTS_ONLY_ENV)
    os.environ[WEIGHTS_ONLY_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[WEIGHTS_ONLY_ENV]
        else:
            os.environ[WEIGHTS_ONLY_ENV] = before


def imagenet_model(backbone: str) -> nn.Module:
    """The torchvision model with its published ImageNet weights, from the cache, checked and loaded by
    torchvision's own builder (strict keys, legacy names renamed as torchvision does)."""
    path = fetch(backbone, progress=False)
    verify(published(backbone))
    try:
        with _weights_only_loads():
            return torchvision.models.get_model(backbone, weights="DEFAULT")
    except Exception as exc:  # unpickling refused, truncated file, wrong keys or shapes
        detail = " ".join(str(exc).split())[:300]  # one line, however long the key list
        raise WeightsUnavailable(f"{path} is not a usable {backbone} ImageNet weights file "
                                 f"({type(exc).__name__}: {detail}); delete it and fetch it again") from exc


def report(backbones: list[str], download: bool, missing_is_error: bool) -> int:
    """Fetch (or only locate) each backbone's file, check its hash and print where it is; the exit status."""
    failed = 0
    for backbone in backbones:
        try:
            path = fetch(backbone) if download else weights_file(backbone)[0]
            state = f"present, SHA-256 {verify(published(backbone))[:16]}..." if path.is_file() else "missing"
        except (WeightsUnavailable, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        failed += missing_is_error and not path.is_file()
        print(f"{backbone}: {path} ({state})")
    return 2 if failed else 0


COMMAND = cli.Command(
    name="weights", module="trainables.weights",
    summary="Fetch or locate named backbones' ImageNet weights (the older form of `cxr-sweep weights --backbone`).",
    examples=("fetch resnet50 densenet121", "where resnet50"))


def _add_arguments(parser: cli.Parser) -> None:
    parser.add_argument("action", choices=("fetch", "where"), help="fetch: download what is missing; where: only say "
                                                                    "where each file is and whether it is there")
    parser.add_argument("backbones", nargs="+", metavar="BACKBONE")


def main(argv: list[str] | None = None) -> int:
    return cli.main(COMMAND, _add_arguments, lambda args: report(args.backbones, download=args.action == "fetch",
                                                                  missing_is_error=False), argv)


if __name__ == "__main__":
    sys.exit(main())
