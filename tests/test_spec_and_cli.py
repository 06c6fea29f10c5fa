"""Specs are checked completely before Ray starts; the CLI turns errors into one line + exit 2."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from sweeper.spec import SpecError, builtin_specs, load_spec, parse_spec
from tests.conftest import REPO

GOOD = """
name = "t"
[grid]
backbone = ["resnet18"]
recipe = ["scratch"]
[recipes.scratch]
"""


@pytest.mark.parametrize("name", builtin_specs())
def test_builtin_specs_validate(name):
    spec, text = load_spec(name)
    assert spec.name == name and text


def test_unknown_keys_are_all_reported_with_their_path():
    text = GOOD + "[train]\nepochz = 3\n[search]\nlr = { low = 1e-4, high = 1e-2, lgo = true }\n"
    with pytest.raises(SpecError) as info:
        parse_spec(text, "my.toml")
    message = str(info.value)
    assert "my.toml: 2 problem(s)" in message
    assert "train.epochz: unknown key" in message and "search.lr.lgo: unknown key" in message


@pytest.mark.parametrize("change, expected", [
    (('["resnet18"]', '["resnet51"]'), "unknown backbone(s) ['resnet51']"),
    (('recipe = ["scratch"]', 'recipe = ["scratch", "nope"]'), "'nope' is not defined"),
    (('recipe = ["scratch"]', 'recipe = []'), "grid.recipe: List should have at least 1 item"),
    (('[recipes.scratch]', '[recipes.scratch]\nsources = ["chexpert"]'), "'chexpert' is not in data.sources"),
    (('[grid]', '[data.phantom]\nprevalence = 1.5\n[grid]'), "data.phantom.prevalence: must be between 0 and 1 (exclusive), or 'real'"),
    (('[recipes.scratch]', '[recipes.scratch]\nstrategy = "mixed"'), "strategy 'mixed' puts a pretrained branch"),
    (('[recipes.scratch]', '[recipes.scratch]\nstrategy = "fused"'), "recipes.scratch.strategy: Input should be 'regular', 'mixed' or 'co_trained'"),
    (('[grid]', '[train]\naugment = { rotat_p = 0.5 }\n[grid]'), "train.augment: unknown key(s) ['rotat_p']"),
    (('[grid]', '[train]\naugment = { rotate_p = 1.5 }\n[grid]'), "train.augment: AugmentConfig.rotate_p=1.5: expected a probability in [0, 1]"),
    (('[grid]', '[train]\nschedule = "step"\n[grid]'), "train.schedule: Input should be 'plateau', 'cosine' or 'constant'"),
])
def test_bad_values_name_their_key(change, expected):
    with pytest.raises(SpecError, match=expected.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        parse_spec(GOOD.replace(*change))


def test_a_bad_range_is_refused():
    with pytest.raises(SpecError, match=r"search.lr: low \(0.1\) must be below high \(0.01\)"):
        parse_spec(GOOD + "[search]\nlr = { low = 0.1, high = 0.01 }\n")


def _run(*args, cwd):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sweeper.run", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)
    return proc, time.monotonic() - started


def test_cli_nonexistent_spec_stops_before_ray(tmp_path):
    proc, _ = _run("--spec", "nonexistent", "--home", str(tmp_path), cwd=REPO)
    assert proc.returncode == 2
    assert "error: no spec named 'nonexistent'; built-in specs: demo, tiny" in proc.stderr
    assert "Traceback" not in proc.stderr and "Ray" not in proc.stdout + proc.stderr


def test_cli_spec_with_unknown_key_stops_before_ray(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text(GOOD + "[train]\nepochz = 3\n")
    proc, _ = _run("--spec", str(spec), "--home", str(tmp_path), cwd=REPO)
    assert proc.returncode == 2 and "train.epochz: unknown key" in proc.stderr
    assert "Started a local Ray" not in proc.stdout + proc.stderr


def test_cli_db_in_a_missing_directory_is_a_clear_error(tmp_path):
    proc, _ = _run("--spec", "tiny", "--home", str(tmp_path), "--db", f"sqlite:///{tmp_path}/no/such/dir/r.db", cwd=REPO)
    assert proc.returncode == 2
    assert f"directory {tmp_path}/no/such/dir does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_prepared_target_must_match_the_specs_size_and_folds(prepared_dir, tmp_path):
    from sweeper.datasets import ensure_datasets

    base = GOOD + f'[data]\ntarget = "{prepared_dir}"\n'
    assert ensure_datasets(parse_spec(base + "size = 32\nfolds = 3\n"), tmp_path)["target"] == prepared_dir
    with pytest.raises(SpecError, match="built with 3 folds but data.folds is 5"):
        ensure_datasets(parse_spec(base + "size = 32\nfolds = 5\n"), tmp_path)
    with pytest.raises(SpecError, match="images are 32 px but data.size is 64"):
        ensure_datasets(parse_spec(base + "size = 64\nfolds = 3\n"), tmp_path)
    with pytest.raises(SpecError, match="not a prepared data set"):
        ensure_datasets(parse_spec(GOOD + f'[data]\ntarget = "{tmp_path}"\n'), tmp_path)
