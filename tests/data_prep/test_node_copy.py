"""A prepared set on a network file system is read from a node-local copy (data_prep.node_copy): the file
system told from the real mount table (checked against util-linux's findmnt), one copy per node reused by
every trial, a changed set copied again, a corrupted copy refused, old copies removed by the cache's limit."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from data_prep.dataset import PreparedDataset
from data_prep.node_copy import (COMPLETE, IN_USE_SECONDS, NETWORK_FILE_SYSTEMS, NodeCopyError, file_checksums,
                                 file_system, node_local)


def test_the_file_system_of_a_path_is_the_one_findmnt_names(tmp_path):
    for path in ("/", "/proc/self", "/dev/shm", "/sys/kernel", str(tmp_path), str(Path(__file__).parent)):
        findmnt = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", path], capture_output=True, text=True)
        assert findmnt.returncode == 0, findmnt.stderr
        assert file_system(Path(path)) == findmnt.stdout.split()[-1], path  # stacked mounts: the one on top
    assert {"nfs4", "cifs", "lustre", "fuse.s3fs"} <= NETWORK_FILE_SYSTEMS and "ext4" not in NETWORK_FILE_SYSTEMS


def test_a_build_records_each_files_sha256_and_a_set_on_a_local_disk_is_read_where_it_is(prepared_dir, tmp_path):
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    assert manifest["files"] == file_checksums(prepared_dir) and "images.npy" in manifest["files"]
    assert file_system(prepared_dir) not in NETWORK_FILE_SYSTEMS  # this machine's disk
    assert node_local(prepared_dir, tmp_path / "cache", 1, "auto") == prepared_dir
    assert not (tmp_path / "cache").exists()


def _copy_of(prepared_dir: Path, tmp_path: Path) -> Path:
    """A set of our own to change (the session's is shared)."""
    return Path(shutil.copytree(prepared_dir, tmp_path / "shared" / prepared_dir.name))


def test_a_copy_is_made_once_reused_and_made_again_when_its_set_changes(prepared_dir, tmp_path):
    source, cache, said = _copy_of(prepared_dir, tmp_path), tmp_path / "cache", []
    copy = node_local(source, cache, 1, "always", log=said.append)
    assert copy == cache / source.name and len(said) == 1 and "copied to this node's" in said[0]
    assert said[0].endswith("CXR_SWEEP_NODE_COPY=always")  # why: not a network file system here
    original, local = PreparedDataset(source), PreparedDataset(copy)
    assert np.array_equal(original.images, local.images) and original.dataset_id == local.dataset_id
    assert local.folds_sha256 == original.folds_sha256
    copied_at = json.loads((copy / COMPLETE).read_text())["copied_at"]
    os.utime(copy / COMPLETE, (0, 0))
    assert node_local(source, cache, 1, "always", log=said.append) == copy and len(said) == 1  # reused
    assert json.loads((copy / COMPLETE).read_text())["copied_at"] == copied_at
    assert (copy / COMPLETE).stat().st_mtime > time.time() - 60  # marked as used now
    time.sleep(0.01)
    (source / "labels.csv").write_text((source / "labels.csv").read_text())  # rewritten: a new modification time
    assert node_local(source, cache, 1, "always", log=said.append) == copy and len(said) == 2  # copied again
    assert json.loads((copy / COMPLETE).read_text())["copied_at"] > copied_at


def test_a_copy_that_does_not_match_the_builds_checksums_is_refused_and_not_kept(prepared_dir, tmp_path):
    source, cache = _copy_of(prepared_dir, tmp_path), tmp_path / "cache"
    with (source / "images.npy").open("r+b") as images:  # a flipped byte on the shared file system
        images.seek(-1, os.SEEK_END)
        last = images.read(1)
        images.seek(-1, os.SEEK_END)
        images.write(bytes([last[0] ^ 1]))
    with pytest.raises(NodeCopyError, match="images.npy: SHA-256"):
        node_local(source, cache, 1, "always", log=lambda _: None)
    assert not (cache / source.name).exists() and not list(cache.glob("*.partial"))


def test_the_cache_limit_removes_the_least_recently_used_copies_but_not_one_in_use(prepared_dir, tmp_path):
    cache, size = tmp_path / "cache", sum(p.stat().st_size for p in prepared_dir.iterdir()) / 1e9
    sets = [Path(shutil.copytree(prepared_dir, tmp_path / "shared" / f"set{i}")) for i in range(3)]
    limit = 2.5 * size  # room for two copies
    first, second = (node_local(s, cache, limit, "always", log=lambda _: None) for s in sets[:2])
    os.utime(first / COMPLETE, (time.time() - 2 * IN_USE_SECONDS,) * 2)  # unused for two hours
    os.utime(second / COMPLETE, (time.time() - 3 * IN_USE_SECONDS,) * 2)  # for three: the oldest
    third = node_local(sets[2], cache, limit, "always", log=lambda _: None)
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == sorted([first.name, third.name])
    node_local(sets[1], cache, limit, "always", log=lambda _: None)  # back: the least recently used goes
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == sorted([sets[1].name, third.name])
    with pytest.raises(NodeCopyError, match="used in the last hour"):  # both in use now: no room for a third
        node_local(sets[0], cache, limit, "always", log=lambda _: None)
    with pytest.raises(NodeCopyError, match="does not fit in the node cache's limit"):
        node_local(sets[0], tmp_path / "small", size / 2, "always", log=lambda _: None)


def test_trials_on_a_node_read_one_copy_made_by_the_first(prepared_dir, tmp_path, monkeypatch):
    """fit opens its data set through the node's settings (its environment): the first trial copies, the
    second reuses the copy, and both train on the same images as from the shared folder."""
    from tests.helpers import fit_config
    from trainables.fit import fit

    source, cache = _copy_of(prepared_dir, tmp_path), tmp_path / "node-disk"
    monkeypatch.setenv("CXR_SWEEP_NODE_COPY", "always")
    monkeypatch.setenv("CXR_SWEEP_NODE_CACHE", str(cache))
    said = []
    first = fit(fit_config(source, epochs=1), report=lambda *_: None, log=said.append)
    second = fit(fit_config(source, epochs=1, lr=2e-3), report=lambda *_: None, log=said.append)
    assert sum("copied to this node's" in line for line in said) == 1, said
    assert (cache / source.name / COMPLETE).is_file()
    monkeypatch.setenv("CXR_SWEEP_NODE_COPY", "never")
    again = fit(fit_config(source, epochs=1), report=lambda *_: None, log=said.append)
    assert first["test_auc"] == again["test_auc"] and second["test_auc"] != first["test_auc"]
    monkeypatch.setenv("CXR_SWEEP_NODE_COPY", "sometimes")
    with pytest.raises(NodeCopyError, match="CXR_SWEEP_NODE_COPY='sometimes': expected one of auto, always, never"):
        fit(fit_config(source, epochs=1), report=lambda *_: None, log=said.append)
