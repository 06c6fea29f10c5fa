"""`cxr-sweep`: every subcommand listed, documented (docs/cli.md's one flag table) and run once, in this process
(a subprocess costs seconds of imports); a mistake is one line and exit 2; renamed flags still work; `query`,
`report` and `status` start without torch or Ray."""
from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sweeper.cli import COMMANDS, main
from tests.conftest import REPO
from vocab import cli

def _call(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cxr_sweep_help_lists_every_subcommand_with_its_summary(capsys):
    code, out, _ = _call(capsys, "--help")
    assert code == 0
    for name, module in COMMANDS.items():
        command = cli.read_command(REPO / (module.replace(".", "/") + ".py"))
        line = next(line for line in out.splitlines() if line.split()[:1] == [name])
        if command is not None:
            assert command.summary in line and command.name == name, (name, line)
        assert len(line.split()) > 3, line  # a summary, whether from COMMAND or from the docstring
    for argv in ([], ["prepar"], ["--bogus"]):
        code, _, err = _call(capsys, *argv)
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err


@pytest.mark.parametrize("name", COMMANDS)
def test_each_subcommands_help_shows_its_examples(name, capsys):
    code, out, _ = _call(capsys, name, "--help")
    assert code == 0 and out.startswith(f"usage: cxr-sweep {name} ")
    examples = out[out.index("\nexamples:\n"):].split("\n\n")[0].splitlines()[2:]
    assert examples and all(e.startswith(f"  cxr-sweep {name}") for e in examples), out


@pytest.mark.parametrize("name", COMMANDS)
def test_a_bad_flag_is_one_line_and_exit_2(name, capsys):
    code, out, err = _call(capsys, name, "--no-such-flag")
    assert code == 2 and not out
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err


# -- docs/cli.md ---------------------------------------------------------------------------------------------


def _table(heading: str) -> dict[str, set[str]]:
    """{flag: subcommands} of the table under `heading` in docs/cli.md (first and last columns)."""
    text = (REPO / "docs" / "cli.md").read_text()
    section = text[text.index(f"\n## {heading}\n"):]
    rows = [line for line in section.split("\n## ")[1].splitlines() if line.startswith("| `--")]
    found = {}
    for row in rows:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        flag = re.match(r"`(--[a-z0-9-]+)", cells[0]).group(1)
        assert flag not in found, f"docs/cli.md: {flag} has two rows"
        found[flag] = {c.strip() for c in cells[-1].split(",")}
    return found


def _flags(name: str) -> tuple[set[str], set[str]]:
    """(the flags a subcommand takes, the renamed ones it still reads)."""
    module = importlib.import_module(COMMANDS[name])
    parser = cli.build_parser(module.COMMAND, module.add_arguments)
    flags = {o for a in parser._actions for o in a.option_strings if o.startswith("--")} - {"--help"}
    return flags, set(parser.renamed)


def test_every_subcommands_flags_are_the_ones_docs_cli_md_lists():
    flags, renamed = _table("Flags"), _table("Renamed flags")
    assert set().union(*flags.values(), *renamed.values()) <= set(COMMANDS), "a row names an unknown subcommand"
    for name in COMMANDS:
        documented = {f for f, names in flags.items() if name in names}
        old = {f for f, names in renamed.items() if name in names}
        taken, kept = _flags(name)
        assert (taken, kept) == (documented, old), (name, taken ^ documented, kept ^ old)


RENAMED = [  # (subcommand, the old form, the new form): both parse to the same values
    ("run", ["--name", "s1", "--report-bootstrap", "20"], ["--sweep", "s1", "--bootstrap", "20"]),
    ("report", ["--operating-point", "youden", "--operating-point=prevalence"],
     ["--threshold", "youden", "--threshold", "prevalence"]),
    ("evaluate", ["--external", "x=/d", "--labels", "x=m.toml"], ["--external", "x=/d", "--mapping", "x=m.toml"]),
    ("rerun", ["--cell", "a/b", "--fold", "1", "--data-dir", "/p"], ["--cell", "a/b", "--fold", "1", "--data", "target=/p"]),
    ("labels", ["target", "t.csv", "--dicom-dir", "/d", "--out", "o.csv"],
     ["target", "--labels", "t.csv", "--images", "/d", "--out", "o.csv"]),
    ("prepare", ["nih", "--dicom-dir", "/d", "--labels", "t.csv", "--out", "/p"],
     ["nih", "--images", "/d", "--labels", "t.csv", "--out", "/p"]),
    ("folds", ["labels.csv", "--k", "3", "--out", "f.csv"], ["--labels", "labels.csv", "--folds", "3", "--out", "f.csv"]),
    ("phantom", ["nih", "--n", "6", "--size", "48", "--blank", "0.5", "--near-duplicates", "0.1", "--out", "/r"],
     ["nih", "--n-patients", "6", "--image-px", "48", "--blank-share", "0.5", "--refiled", "0.1", "--out", "/r"]),
]


@pytest.mark.parametrize("name, old, new", RENAMED, ids=[r[0] for r in RENAMED])
def test_renamed_flags_still_parse_to_the_same_values_with_a_note(name, old, new, capsys):
    module = importlib.import_module(COMMANDS[name])
    parse = cli.build_parser(module.COMMAND, module.add_arguments).parse_args
    assert vars(parse(old)) == vars(parse(new))
    notes = capsys.readouterr().err.splitlines()
    assert notes and all(line.startswith("note: ") and " is now " in line for line in notes), notes


# -- one real call of each -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A workspace whose default DB (HOME/results.db) holds the handmade sweep."""
    from tests.handmade_sweep import build_sweep

    home = tmp_path_factory.mktemp("home")
    build_sweep(f"sqlite:///{home}/results.db")
    return home


def test_query_and_status_find_the_db_from_home_alone(home, capsys):
    code, out, err = _call(capsys, "query", "--home", str(home), "--json",
                           "SELECT sweep, backbone, recipe, variant, fold, status FROM trial_summary")
    assert code == 0, err
    trials = pd.DataFrame(json.loads(out))
    code, out, err = _call(capsys, "status", "--home", str(home))
    assert code == 0, err
    total = trials["status"].value_counts()
    assert re.search(rf"handmade\s+handmade\s+FINISHED .* {len(trials)}\s+{total['COMPLETE']}\s+0\s+{total['ERROR']}\s+0\n",
                     out), out
    per_cell = trials.groupby(["backbone", "recipe", "fold"]).size()
    lines = out[out.index("per cell and outer fold"):].splitlines()[2:]
    assert len(lines) == len(per_cell)
    for line in lines:
        cell, fold, count, *_ = line.split()
        assert per_cell[(*cell.split("/"), int(fold))] == int(count), line
    code, _, err = _call(capsys, "status", "--home", str(home), "--sweep", "nope")
    assert code == 2 and "no sweep named 'nope'" in err and len(err.splitlines()) == 1


def test_report_from_home_with_a_renamed_flag(home, capsys):
    code, out, err = _call(capsys, "report", "--home", str(home), "--bootstrap", "0", "--operating-point", "youden")
    assert code == 0, err
    assert "## Source data selection" in out and "youden" in out
    assert "note: --operating-point is now --threshold" in err


@pytest.mark.parametrize("name, argv", [
    ("predict", ["{files}/x.png"]),
    ("evaluate", ["--external", "elsewhere={files}"]),
    ("rerun", ["--cell", "resnet50/imagenet", "--fold", "0"]),
])
def test_model_commands_name_a_sweep_the_db_does_not_hold(home, tmp_path, capsys, name, argv):
    (tmp_path / "x.png").write_bytes(b"")
    argv = [a.format(files=tmp_path) for a in argv]
    code, out, err = _call(capsys, name, *argv, "--home", str(home), "--sweep", "nope")
    assert code == 2 and "'nope'" in err and err.startswith("error: ") and "Traceback" not in err, err


def test_run_dry_run_and_weights_of_a_spec(capsys):
    code, out, err = _call(capsys, "run", "--spec", "tiny", "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out)["trials"] == 2 * 2 * 2 * 2
    code, out, err = _call(capsys, "weights", "--spec", "tiny")
    assert code == 0 and "starts no backbone from ImageNet" in out, err


def test_phantom_prepare_labels_folds_and_summary_on_a_small_nih_set(tmp_path, prepared_dir, capsys):
    raw = tmp_path / "raw"
    assert _call(capsys, "phantom", "nih", "--n-patients", "6", "--image-px", "48", "--out", str(raw))[0] == 0
    code, out, err = _call(capsys, "prepare", "nih", "--images", str(raw / "images"), "--labels",
                           str(raw / "Data_Entry_2017.csv"), "--out", str(tmp_path / "prep"), "--size", "32",
                           "--folds", "2", "--workers", "1")
    assert code == 0, err
    prepared = pd.read_csv(Path(out.strip().splitlines()[-1]) / "labels.csv")
    code, _, err = _call(capsys, "labels", "nih", "--labels", str(raw / "Data_Entry_2017.csv"), "--out",
                         str(tmp_path / "labels.csv"))
    assert code == 0, err
    labels = pd.read_csv(tmp_path / "labels.csv")
    assert sorted(labels["image_key"]) == sorted(prepared["image_key"])  # the same pseudonyms, without images
    code, _, err = _call(capsys, "folds", "--labels", str(tmp_path / "labels.csv"), "--folds", "2", "--out",
                         str(tmp_path / "f.csv"))
    assert code == 0 and set(pd.read_csv(tmp_path / "f.csv")["fold"]) == {0, 1}, err
    code, out, err = _call(capsys, "summary", str(prepared_dir), "--out", str(tmp_path / "summary"))
    assert code == 0 and out.strip() == (tmp_path / "summary" / "summary.md").read_text().strip(), err


def test_query_report_status_and_help_import_neither_torch_nor_ray(home):
    """results runs on a laptop without torch (docs/design.md §2): the command imports only the chosen module.
    The commands that apply models (predict, evaluate, rerun) import torch only to apply them: their help
    answers at once."""
    code = (f"import sys\nfrom sweeper.cli import main\n"
            f"for argv in (['--help'], ['query', '--help'], ['report', '--help'], ['status', '--help'],"
            f" ['predict', '--help'], ['evaluate', '--help'], ['rerun', '--help'],"
            f" ['query', '--home', {str(home)!r}, 'SELECT COUNT(*) AS n FROM sweeps'],"
            f" ['status', '--home', {str(home)!r}]):\n"
            f"    assert main(argv) == 0, argv\n"
            f"print(sorted(m for m in ('torch', 'ray', 'torchvision') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def _documented_lines() -> list[tuple[str, list[str]]]:
    """Every `cxr-sweep ...` command in a ```sh block of the README and docs/*.md, continuations joined."""
    import shlex

    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in re.findall(r"```sh\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if line.split()[:1] and line.split()[0].endswith("/cxr-sweep"):
                    found.append((f"{path.name}: {line.strip()}", shlex.split(line.split(" #")[0])[1:]))
    return found


def test_every_documented_cxr_sweep_command_parses():
    lines = _documented_lines()
    assert len(lines) >= 7  # the README's prepare, summary and run lines at least
    for where, argv in lines:
        assert argv and argv[0] in COMMANDS, where
        module = importlib.import_module(COMMANDS[argv[0]])
        cli.build_parser(module.COMMAND, module.add_arguments).parse_args(argv[1:])
