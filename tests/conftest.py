"""Shared fixtures: a private pseudonym key, a small phantom DICOM set and its prepared form."""
from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.build import BuildParams, build
from data_prep.phantom import make_phantom_set

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
TEST_KEY = b"0123456789abcdef0123456789abcdef-test-key"


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
    make_phantom_set(out, kind="target", n_patients=24, size=64, prevalence=0.3, seed=3)
    return out


@pytest.fixture(scope="session")
def prepared_dir(phantom_dir, tmp_path_factory) -> Path:
    return build(phantom_dir, phantom_dir / "labels.csv", tmp_path_factory.mktemp("prepared"),
                 BuildParams(size=32, folds=3, seed=0), key=TEST_KEY, log=lambda *_: None)
