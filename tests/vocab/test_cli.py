"""vocab.cli: the parser's conventions, renamed flags, the model -> flags generator, the one error path."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from vocab import cli
from vocab.errors import CxrSweepError, run_command

COMMAND = cli.Command(name="toy", module="tests.vocab.toy", summary="A toy command.", examples=("--folds 3",),
                      interrupted="continue with: {prog} --sweep {sweep}")


def _toy(parser: cli.Parser) -> None:
    cli.add_db(parser)
    cli.add_sweep(parser)
    cli.add_folds(parser)
    cli.add_data(parser, help="data sets", names=("target",))
    parser.rename("--k", "--folds")
    parser.rename("--data-dir", "--data", value="target={}")


def _run(capsys, argv, run=lambda args: 0) -> tuple[int, list[str]]:
    code = cli.main(COMMAND, _toy, run, argv)
    return code, capsys.readouterr().err.splitlines()


def test_a_usage_error_is_one_line_and_exit_2_and_flags_are_never_abbreviated(capsys):
    for argv in (["--fold", "3"], ["--folds", "1"], ["--folds"], ["--data", "target"], ["--data", "nih=/x"]):
        code, err = _run(capsys, argv)
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and err[0].endswith("--help)"), (argv, err)
    assert "--folds 1" not in _run(capsys, ["--folds", "1"])[1][0] and "at least 2" in _run(capsys, ["--folds", "1"])[1][0]
    assert "takes --data for target only" in _run(capsys, ["--data", "nih=/x"])[1][0]


def test_renamed_flags_are_read_as_the_new_ones_with_a_note(capsys):
    parser = cli.build_parser(COMMAND, _toy)
    assert vars(parser.parse_args(["--k", "4", "--data-dir", "/p"])) == \
        vars(parser.parse_args(["--folds", "4", "--data", "target=/p"]))
    assert capsys.readouterr().err.splitlines() == ["note: --k is now --folds", "note: --data-dir is now --data target=DATA-DIR"]
    assert parser.parse_args(["--k=7"]).folds == 7
    shown = parser.format_help()
    assert "examples:\n  python -m tests.vocab.toy --folds 3" in shown and "  --k -> --folds" in shown


def test_db_defaults_to_the_home_workspace_made_absolute(tmp_path):
    parse = cli.build_parser(COMMAND, _toy).parse_args
    assert parse(["--home", str(tmp_path)]).db == f"sqlite:///{tmp_path}/results.db"
    assert parse([]).db == f"sqlite:///{Path('.cxr-sweep').resolve()}/results.db"
    assert parse(["--db", "postgresql+psycopg://h/db"]).db == "postgresql+psycopg://h/db"


def test_the_one_error_path(capsys):
    class Mistake(CxrSweepError):
        pass

    def mistake(args):
        raise Mistake("row 3: expected a number")

    def interrupted(args):
        args.sweep = "s1"  # known by the time of Ctrl-C: the hint names it
        raise KeyboardInterrupt

    assert _run(capsys, [], mistake) == (2, ["error: row 3: expected a number"])
    assert _run(capsys, [], interrupted) == (130, ["interrupted; continue with: python -m tests.vocab.toy --sweep s1"])
    assert run_command(lambda: (_ for _ in ()).throw(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "interrupted\n"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        _run(capsys, [], lambda args: 1 // 0)
    assert cli.main(COMMAND, _toy, lambda args: 0, ["--help"]) == 0


def test_read_command_takes_the_summary_from_a_file_without_importing_it(tmp_path):
    path = tmp_path / "tool.py"
    path.write_text('import not_installed_anywhere\nfrom vocab import cli\n\nCOMMAND = cli.Command(\n    name="tool", '
                    'module="x.tool", summary="Do a " "thing.", examples=("--a", "--b"))\n')
    assert cli.read_command(path) == cli.Command("tool", "x.tool", "Do a thing.", ("--a", "--b"))
    path.write_text('"""No command here."""\n')
    assert cli.read_command(path) is None


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(512, ge=16, description="output side in px")
    bits: Literal[8, 16] = Field(8, description="bits per pixel")
    holdout: tuple[int, int, int] | None = Field(None, description="percentages")
    allow_missing: bool = Field(False, description="build with 1% missing")
    near_duplicates: float | Literal["off"] = Field(0.9, description="correlation, or off")


def test_a_models_fields_become_flags_with_their_type_choices_default_and_help():
    parser = argparse.ArgumentParser()
    cli.add_model_flags(parser, Settings)
    args = parser.parse_args(["--size", "64", "--bits", "16", "--holdout", "60", "20", "20", "--allow-missing",
                              "--near-duplicates", "off"])
    assert cli.model_from_flags(Settings, args) == Settings(size=64, bits=16, holdout=(60, 20, 20), allow_missing=True,
                                                           near_duplicates="off")
    assert cli.model_from_flags(Settings, parser.parse_args([])) == Settings()  # the model's own defaults
    assert cli.model_from_flags(Settings, parser.parse_args(["--near-duplicates", "0.8"])).near_duplicates == 0.8
    with pytest.raises(cli.UsageError, match=r"--size: Input should be greater than or equal to 16"):
        cli.model_from_flags(Settings, parser.parse_args(["--size", "8"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--bits", "12"])
    assert "output side in px (default 512)" in parser.format_help()


def test_the_source_options_flags_are_what_the_generator_makes_of_their_models():
    """data_prep.sources' hand-written generator, generalised: the same flags, types, choices and help."""
    from data_prep.sources import CLI_SKIPS, OPTIONS, add_cli_options

    theirs, ours = argparse.ArgumentParser(), argparse.ArgumentParser()
    add_cli_options(theirs)
    cli.add_model_flags(ours, OPTIONS, skip=CLI_SKIPS)

    def described(parser):
        return [(a.option_strings, a.dest, a.choices and list(a.choices), a.type, a.help, a.default, a.nargs)
                for a in parser._actions if a.dest != "help"]

    assert described(ours) == described(theirs)
    args = ours.parse_args(["--policy", "u_zeros", "--frontal-only"])
    assert cli.model_values(args, OPTIONS, "chexpert", skip=CLI_SKIPS) == {"policy": "u_zeros", "frontal_only": True}
    with pytest.raises(cli.UsageError, match="--policy is not an option of nih; its options: --preset"):
        cli.model_values(args, OPTIONS, "nih", skip=CLI_SKIPS)


@pytest.mark.parametrize("text, ok", [("auto", True), ("cpu", True), ("cuda", True), ("cuda:1", True),
                                      ("gpu", False), ("cuda:x", False), ("", False)])
def test_device_values(text, ok):
    if ok:
        assert cli.device(text) == text
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="expected auto, cpu, cuda or cuda:N"):
            cli.device(text)
