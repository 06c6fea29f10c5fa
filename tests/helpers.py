"""What many tests do the same way, written once: a small spec, the environment a command runs in,
running a command as a user would, a fit config and its reports, and a test cluster's ports and processes."""
from __future__ import annotations

import copy
import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import tomli_w

from tests.conftest import REPO, TEST_KEY

# The smallest sweep that trains: one resnet18 cell from scratch, 2 folds of a 16-patient phantom at
# 32 px, one trial per fold, one epoch. A test changes what it is about (`spec_text(**changes)`).
SMALL_SPEC = {
    "data": {"target": "phantom", "size": 32, "folds": 2, "phantom": {"n_patients": 16, "image_px": 64, "seed": 2}},
    "grid": {"backbone": ["resnet18"], "recipe": ["scratch"]},
    "recipes": {"scratch": {}},
    "search": {"trials": 1},
    "train": {"epochs": 1, "batch_size": 8},
}


def _merge(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def spec_text(name: str, **tables) -> str:
    """SMALL_SPEC named `name`, with each table given merged into it (`train={"epochs": 2}`)."""
    return tomli_w.dumps(_merge({"name": name, **SMALL_SPEC}, tables))


def write_spec(path: Path, name: str, **tables) -> Path:
    path.write_text(spec_text(name, **tables))
    return path


def sweep_env(folder: Path, drop: tuple[str, ...] = (), **variables: str) -> dict:
    """The environment a test's command runs in: this one, with a pseudonym key file of the tests' key in
    `folder` (never the user's), less the variables named in `drop` (prefixes too), plus `variables`."""
    key = folder / "pseudonym.key"
    if not key.exists():
        key.write_text(TEST_KEY.decode())
    env = {k: v for k, v in os.environ.items() if not (drop and k.startswith(drop))}
    return {**env, "CXR_SWEEP_PSEUDONYM_KEY_FILE": str(key), **variables}


def run_cli(module: str, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` from the repository, as a user runs it; output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout)


RAY_CLI = str(Path(sys.executable).with_name("ray"))  # this venv's `ray` command
# What Ray 2.60 says to a node (`ray start --address`) that does not hold the cluster's token
TOKEN_REFUSED = "Authentication token is missing or incorrect"


def run_command(args: list[str], env: dict, timeout: int = 240, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """A command from the repository (or another checkout `cwd`), as a user runs it; output captured as text."""
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def join_cluster(address: str, env: dict, *more: str) -> subprocess.CompletedProcess:
    """`ray start --address=ADDRESS` as a new node; one that is refused gives up after 3 tries (Ray's
    default: 20)."""
    return run_command([RAY_CLI, "start", f"--address={address}", *more],
                       {**env, "RAY_gcs_server_port_wait_time_s": "3"})


def reported_nodes(storage: Path, field: str = "node_id") -> dict[str, set[str]]:
    """{trial id: the Ray nodes (`node_id`, or `node_ip`) its reports came from}, from Ray's own result files
    in a Tune experiment's folder."""
    return {f.parent.name: {json.loads(line)[field] for line in f.read_text().splitlines()}
            for f in storage.glob("*/result.json")}


def sweep_args(spec: Path | str, home: Path, name: str, *more: str) -> list[str]:
    """sweeper.run's arguments for a sweep with its own home and SQLite DB in it."""
    return ["--spec", str(spec), "--home", str(home), "--db", f"sqlite:///{home}/results.db", "--sweep", name, *more]


def fit_config(data_dir, **overrides):
    """A FitConfig for the trainables' tests: resnet18 on outer fold 0, 3 epochs of 8 images, one thread."""
    from trainables.config import FitConfig

    settings = dict(data_dir=str(data_dir), backbone="resnet18", outer_fold=0, epochs=3, batch_size=8, lr=1e-3,
                    threads=1)
    return FitConfig(**{**settings, **overrides})


def fit_reports(cfg, **kwargs) -> list[tuple[dict, dict]]:
    """`fit` as a plain function: every (metrics, checkpoint state) it reports. The state holds live tensors,
    so it is copied at report time (the Ray adapter saves it then)."""
    from trainables.fit import fit

    reports = []
    fit(cfg, report=lambda m, s: reports.append((m, copy.deepcopy(s))), log=lambda *_: None, **kwargs)
    return reports


def dead_port() -> int:
    """A localhost port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finished_trials(db_path: Path) -> int:
    """Trials a sweep's SQLite DB holds as ended (read-only, while the sweep writes it)."""
    if not db_path.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM sweep_trials WHERE status != 'RUNNING'").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def stop_cluster(ray_tmp: Path) -> None:
    """Stop the Ray processes of one test's cluster only (`ray stop` would stop every Ray on the machine):
    those whose command line or environment names its temp folder, and everything they started."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(ray_tmp) in " ".join(proc.info["cmdline"] or []) or proc.environ().get("RAY_TMPDIR") == str(ray_tmp):
                found += [proc, *proc.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for proc in found:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(found, timeout=3)  # a test's throwaway cluster: no need for Ray's 16 s of grace
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
