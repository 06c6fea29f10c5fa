"""Shared fixtures: a private pseudonym key, a small phantom DICOM set and its prepared form."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from data_prep.build import build
from data_prep.settings import BuildSettings
from phantom.generate import make_phantom_set

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
TEST_KEY = b"0123456789abcdef0123456789abcdef-test-key"


def pytest_configure(config):
    """Under pytest-xdist (make test's quick tests: one process per core) every process keeps to one thread:
    two processes running two-thread OpenMP each on two cores spin against each other (a 9 s fit took 89 s)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"  # and the commands the tests start
        torch.set_num_threads(1)


# Session fixtures that train (seconds each): under pytest-xdist every worker would make its own, so the
# quick tests that use one run on one worker (`--dist loadgroup`).
SHARED_TRAINING = ("learned_run",)


# Slow tests with sweeps of their own that run in the smoke sweeps' stream, after them, so that both streams
# end together (fresh clone, 2 cores: smoke stream about 550 s, the other about 550 s; the `ray up` test's
# first 85 s are one busy core installing the nodes' venv). It starts its Ray from the test process
# (ray.init): its workers take ports the OS picks. The clusters started with `ray start` (Slurm, ray up, the
# autoscaler's head) stay in one stream: each takes worker ports from 10002 up, and two at once would take
# the same ones.
SMOKE_STREAM_TOO = (
    "tests/data_prep/test_source_kinds.py::"
    "test_the_toy_kind_flows_through_a_sweep_into_the_results_db_and_the_report_and_failing_trials_are_recorded",
)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    """`make test` runs the slow tests on two pytest-xdist workers, as two streams (`--dist loadgroup`): the
    tests that read the session's smoke sweeps (tests/smoke_sweeps.py: run once, on one worker) and the
    sweeps of their own (clusters, Slurm, faults). Much of a cluster test is waiting on Ray's processes,
    which the smoke sweeps' training fills. Quick tests that share a trained fixture share a worker."""
    for item in items:
        if item.get_closest_marker("slow"):
            own = "smoke_sweeps" not in item.fixturenames and item.nodeid not in SMOKE_STREAM_TOO
            stream = "own-sweeps" if own else "smoke-sweeps"
            item.add_marker(pytest.mark.xdist_group(stream))
            continue
        shared = [name for name in SHARED_TRAINING if name in item.fixturenames]
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))


@pytest.hookimpl(tryfirst=True)  # before the test's fixtures (the smoke sweeps) are made
def pytest_runtest_setup(item):
    """A group pytest-xdist did not take fails the test, instead of slowing it silently: with pytest 9.2 and
    pytest-xdist 3.8 (pytest-xdist#1386) every worker ran the smoke sweeps itself, and two filled the memory.
    pytest-xdist marks a grouped test by appending `@GROUP` to its id."""
    grouped = getattr(item.config.option, "loadgroup", False) and os.environ.get("PYTEST_XDIST_WORKER")
    if grouped and item.get_closest_marker("xdist_group") and "@" not in item.nodeid.rpartition("]")[2]:
        pytest.fail("--dist loadgroup did not group this test: this pytest-xdist cannot group on this pytest "
                    "(pytest-xdist#1386); install the pins of constraints.txt", pytrace=False)


@pytest.fixture(autouse=True)
def private_key_file(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.config key from a test."""
    path = tmp_path_factory.getbasetemp() / "pseudonym.key"
    if not path.exists():
        path.write_text(TEST_KEY.decode())
    monkeypatch.setenv("CXR_SWEEP_PSEUDONYM_KEY_FILE", str(path))
    return path


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    make_phantom_set(out, kind="target", n_patients=24, image_px=64, prevalence=0.3, seed=3)
    return out


@pytest.fixture(scope="session")
def prepared_dir(phantom_dir, tmp_path_factory) -> Path:
    return build(phantom_dir, phantom_dir / "labels.csv", tmp_path_factory.mktemp("prepared"),
                 BuildSettings(size=32, folds=3, seed=0), key=TEST_KEY, log=lambda *_: None)


@pytest.fixture(scope="session")
def chexpert_prepared_dir(tmp_path_factory) -> Path:
    """A small phantom CheXpert source (U-Ignore: uncertain labels are unknown) at the target's 32 px."""
    from data_prep.sources import ChexpertOptions

    raw = tmp_path_factory.mktemp("chexpert_raw")
    make_phantom_set(raw, kind="chexpert", n_patients=16, image_px=48, prevalence=0.3, seed=5)
    return build(raw, raw / "train.csv", tmp_path_factory.mktemp("chexpert_prepared"),
                 BuildSettings(size=32, folds=3, seed=0, source=ChexpertOptions(policy="u_ignore")),
                 key=TEST_KEY, name="chexpert_phantom", log=lambda *_: None)


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory) -> tuple[Path, dict, dict]:
    """(data set, final metrics, final checkpoint state) of a short run that learns the phantom's
    cardiac hypertrophy (a big heart): 120 patients at 64 px, 10 epochs, about 12 s on one thread."""
    import copy

    from tests.helpers import fit_config
    from trainables.fit import fit

    raw = tmp_path_factory.mktemp("learnable")
    make_phantom_set(raw, kind="target", n_patients=120, image_px=128, prevalence=0.4, seed=11, images_per_patient=(1, 1))
    data = build(raw, raw / "labels.csv", tmp_path_factory.mktemp("learnable_prepared"),
                 BuildSettings(size=64, folds=3, seed=0), key=TEST_KEY, log=lambda *_: None)
    reports = []
    cfg = fit_config(data, epochs=10, batch_size=16, dropout=0.0, schedule="constant")
    fit(cfg, report=lambda m, s: reports.append((m, copy.deepcopy(s))), log=lambda *_: None)
    return data, reports[-1][0], reports[-1][1]


# Real-service fixtures (PostgreSQL, headless Chromium): engine_url, render_html.
from tests.services_fixtures import _postgres_admin, engine_url, render_html  # noqa: E402,F401
# Both studies' smoke sweeps, once per session, for every test that reads a finished sweep: smoke_sweeps.
from tests.smoke_sweeps import smoke_sweeps  # noqa: E402,F401
