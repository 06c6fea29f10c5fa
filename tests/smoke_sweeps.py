"""Both studies' smoke sweeps, run once per test session through the CLI and shared by every test that
reads a finished sweep (the seeds' tables, the report, predict, query, resume, the privacy scan), instead
of each module running a small sweep of its own.

They run as a user would: offline, with ImageNet weight files in torchvision's published layout seeded
into a temporary TORCH_HOME, one home and one SQLite DB for both, Ray's session files under a temporary
RAY_TMPDIR that the privacy test scans. That folder holds a stale `ray start` record (a cluster recorded on
the machine and gone since), which must not capture them (tests/sweeper/test_ray_address.py).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPECS = ("paper", "zhou2020")
# What each run adds to `--smoke`. The paper's 16 cells x 2 folds keep one trial per study of one epoch: what a
# second trial of a study brings (Optuna's numbering, ASHA's pruning, a pruned trial's storage) and curves over
# epochs are checked on zhou2020's 16 studies of 2 trials of 2 epochs. Both on 40 patients per phantom set
# instead of --smoke's 60 (a third less to train; every label still has positives in every split with these
# seeds). The paper's report draws Grad-CAM, and its models meet an external set (phantom films of other
# patients).
FEWER = ("--set", "data.phantom.n_patients=40", "--set", "data.phantom.source_patients=40")
EXTRA = {"paper": ("--set", "search.trials=1", "--set", "train.epochs=1", *FEWER,
                   "--set", "data.external.elsewhere.location=phantom:target"),
         "zhou2020": ("--no-report-images", *FEWER)}


@dataclass
class SmokeSweeps:
    home: Path
    db: str
    env: dict  # the environment the CLI ran with (key file, TORCH_HOME, RAY_TMPDIR, offline)
    stdout: dict  # spec -> what its run printed
    stderr: dict

    def run_args(self, spec: str) -> list[str]:
        """The `sweeper.run` flags the session ran `spec` with (a resume must repeat them)."""
        return ["--spec", spec, "--smoke", *EXTRA[spec], "--home", str(self.home), "--num-cpus", "2",
                "--sweep", f"{spec}-smoke"]

    def report(self, spec: str) -> Path:
        return self.home / "reports" / f"{spec}-smoke"

    def cli(self, module: str, *args, timeout: int = 900) -> subprocess.CompletedProcess:
        """`python -m MODULE ARGS` in the environment the sweeps ran in."""
        from tests.helpers import run_cli

        return run_cli(module, *args, env=self.env, timeout=timeout)


@pytest.fixture(scope="session")
def smoke_sweeps(tmp_path_factory) -> SmokeSweeps:
    from tests.helpers import dead_port, sweep_env

    root = tmp_path_factory.mktemp("studies")
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # a short path: Ray's sockets live there
    (Path(ray_tmp) / "ray").mkdir()
    (Path(ray_tmp) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{dead_port()}")  # `ray start`'s record
    env = sweep_env(root, TORCH_HOME=str(root / "torch"), CXR_SWEEP_OFFLINE="1", CXR_SWEEP_UNVERIFIED_WEIGHTS="1",
                    RAY_TMPDIR=ray_tmp)
    seeded = subprocess.run([sys.executable, "-c", "from tests.published_weights import seed_published\n"
                             "for b in ('resnet50', 'densenet121', 'mobilenet_v2'): seed_published(b)"],
                            cwd=REPO, env=env, capture_output=True, text=True)
    assert seeded.returncode == 0, seeded.stderr
    sweeps = SmokeSweeps(root / "home", f"sqlite:///{root / 'home' / 'results.db'}", env, {}, {})
    for spec in SPECS:
        done = sweeps.cli("sweeper.run", *sweeps.run_args(spec), "--bootstrap", "50", timeout=1200)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        sweeps.stdout[spec], sweeps.stderr[spec] = done.stdout, done.stderr
    yield sweeps
    shutil.rmtree(ray_tmp, ignore_errors=True)
