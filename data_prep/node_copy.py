"""A node-local copy of a prepared data set that lives on a network file system.

On a cluster `--home` is a network file system (EFS, NFS: docs/clusters.md), and a streamed source is read
at random: about 250 KB an image at 512 px, 300 MB/s at the GPU goal of 1,200 images/s, more than such a
file system gives one reader. A trial opens its data sets through `node_local`: a set on a network file
system (or any set, with `mode = "always"`) is copied once per node into a cache on the node's own disk,
each file checked by its SHA-256 (against the build's record where the manifest has one, else against what
was read), and reused by every later trial on the node while the source is unchanged (its manifest, and
each file's size and modification time, as at the copy). Copies beyond the cache's limit are removed, least
recently used first, never one used in the last hour (a trial on the node may still be opening it).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from filelock import FileLock

from data_prep.errors import DataPrepError
from data_prep.labelset import file_sha256

MODES = ("auto", "always", "never")
# File systems whose reads cross the network (psutil's fstype names, as /proc/mounts gives them)
NETWORK_FILE_SYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
    "fuse.glusterfs", "fuse.cephfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.sshfs", "fuse.mountpoint-s3",
    "fuse.goofys", "fuse.rclone", "wekafs", "panfs",
})
MODE_ENV, CACHE_ENV, LIMIT_ENV = "CXR_SWEEP_NODE_COPY", "CXR_SWEEP_NODE_CACHE", "CXR_SWEEP_NODE_CACHE_GB"
COMPLETE = ".node-copy.json"  # in a finished copy: what it was copied from, when, and each file's SHA-256
IN_USE_SECONDS = 3600  # a copy used this recently is never removed for space
CHUNK = 8 << 20


class NodeCopyError(DataPrepError):
    """A copy that does not match its source's recorded SHA-256, or a cache that cannot hold the set."""


def file_system(path: Path) -> str:
    """The type of the file system `path` is on ("nfs4", "ext4", ...), from the mount table; "" if unknown."""
    import psutil

    resolved, best, kind = str(Path(path).resolve()), "", ""
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint.rstrip("/") or "/"
        inside = resolved == mount or resolved.startswith(mount if mount == "/" else mount + "/")
        if inside and len(mount) >= len(best):  # the deepest mount; of mounts stacked there, the last (on top)
            best, kind = mount, part.fstype
    return kind


def is_remote(path: Path) -> bool:
    return file_system(path) in NETWORK_FILE_SYSTEMS


def file_checksums(folder: Path) -> dict[str, dict]:
    """{file: {"bytes": size, "sha256": digest}} of a prepared set's files but its manifest: the build records
    them in the manifest, and a node-local copy is checked against them."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != "manifest.json"}


def source_signature(root: Path) -> dict:
    """What says the source is unchanged: its manifest's SHA-256 and each file's size and modification time."""
    files = sorted(p for p in root.iterdir() if p.is_file())
    return {"manifest_sha256": hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest(),
            "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


def settings() -> tuple[str, Path, float]:
    """(mode, cache folder, limit in GB) of this node: properties of its disks, so its environment says them
    (cluster.yaml's setup commands), defaults: auto, /tmp/cxr-sweep-data, 100 GB."""
    mode = os.environ.get(MODE_ENV, "auto")
    if mode not in MODES:
        raise NodeCopyError(f"{MODE_ENV}={mode!r}: expected one of {', '.join(MODES)}")
    limit = os.environ.get(LIMIT_ENV, "100")
    try:
        limit_gb = float(limit)
    except ValueError:
        limit_gb = -1.0
    if not limit_gb > 0:
        raise NodeCopyError(f"{LIMIT_ENV}={limit!r}: expected a number of gigabytes above 0")
    return mode, Path(os.environ.get(CACHE_ENV, "/tmp/cxr-sweep-data")), limit_gb


def node_local(root: Path | str, cache_dir: Path | str | None = None, limit_gb: float | None = None,
               mode: str | None = None, log=print) -> Path:
    """The folder a trial should read the prepared set `root` from: `root` itself, or its node-local copy.
    What is not given comes from the node's environment (`settings`)."""
    root = Path(root)
    default_mode, default_cache, default_limit = settings()
    mode, cache_dir = mode or default_mode, cache_dir or default_cache
    limit_gb = limit_gb if limit_gb is not None else default_limit
    if mode not in MODES:
        raise ValueError(f"node copy mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "never" or (mode == "auto" and not is_remote(root)):
        return root
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    copy = cache / root.name
    with FileLock(str(cache / f"{root.name}.lock")):
        signature = source_signature(root)
        if _current(copy, signature):
            os.utime(copy / COMPLETE)  # last used: what the cache's limit removes last
            return copy
        needed = sum(size for size, _ in signature["files"].values())
        _make_room(cache, needed, limit_gb, keep=copy)
        _copy(root, copy, signature, log, "it is on a network file system" if mode == "auto" else f"{MODE_ENV}={mode}")
    return copy


def _current(copy: Path, signature: dict) -> bool:
    try:
        record = json.loads((copy / COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    return record.get("source") == signature


def _copy(root: Path, copy: Path, signature: dict, log, why: str) -> None:
    """Copy every file of `root` into `copy` (whole, then renamed), checking each by its SHA-256."""
    started = time.monotonic()
    recorded = json.loads((root / "manifest.json").read_text()).get("files", {})  # the build's checksums, if any
    work = copy.with_name(copy.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(copy, ignore_errors=True)
    work.mkdir()
    digests = {}
    for name in signature["files"]:
        read = _copy_file(root / name, work / name)
        written = file_sha256(work / name)
        expected = recorded.get(name, {}).get("sha256", read)
        if not read == written == expected:
            shutil.rmtree(work, ignore_errors=True)
            raise NodeCopyError(f"node-local copy of {root / name}: SHA-256 {written[:12]}... of the copy, "
                                f"{read[:12]}... as read, {expected[:12]}... recorded by the build; the source "
                                f"changed while it was copied, or a disk or the network corrupted it")
        digests[name] = written
    (work / COMPLETE).write_text(json.dumps({"source": signature, "from": str(root), "sha256": digests,
                                             "copied_at": time.time()}, indent=1))
    work.rename(copy)
    size = sum(s for s, _ in signature["files"].values())
    log(f"[data] {root.name}: copied to this node's {copy.parent} ({size / 1e9:.2f} GB in "
        f"{time.monotonic() - started:.1f} s): {why}")


def _copy_file(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as read, open(target, "wb") as write:
        while chunk := read.read(CHUNK):
            digest.update(chunk)
            write.write(chunk)
    shutil.copystat(source, target)
    return digest.hexdigest()


def _make_room(cache: Path, needed: int, limit_gb: float, keep: Path) -> None:
    """Remove the least recently used copies until `needed` more bytes fit under the limit; an error if the
    set alone is over it, or if what must stay (copies used in the last hour) leaves too little."""
    limit = int(limit_gb * 1e9)
    if needed > limit:
        raise NodeCopyError(f"{keep.name} ({needed / 1e9:.1f} GB) does not fit in the node cache's limit of "
                            f"{limit_gb:g} GB; raise CXR_SWEEP_NODE_CACHE_GB on the node or set CXR_SWEEP_NODE_COPY=never")
    copies = []
    for entry in cache.iterdir():
        if entry.is_dir() and entry != keep:
            marker = entry / COMPLETE
            used = marker.stat().st_mtime if marker.is_file() else entry.stat().st_mtime
            copies.append((used, entry, sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())))
    total = sum(size for _, _, size in copies)
    for used, entry, size in sorted(copies, key=lambda c: c[0]):
        if total + needed <= limit:
            return
        if time.time() - used < IN_USE_SECONDS:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        total -= size
    if total + needed > limit:
        raise NodeCopyError(f"the node cache {cache} holds {total / 1e9:.1f} GB of copies used in the last hour; "
                            f"{keep.name} needs {needed / 1e9:.1f} GB more than its limit of {limit_gb:g} GB allows")
