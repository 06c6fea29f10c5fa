"""Specs are checked completely before Ray starts; the CLI turns errors into one line + exit 2."""
from __future__ import annotations

import re
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
    assert "error: no spec named 'nonexistent'; built-in specs: demo, paper, tiny" in proc.stderr
    assert "Traceback" not in proc.stderr and "Ray" not in proc.stdout + proc.stderr


def _main(capsys, *args) -> tuple[int, str]:
    """The CLI in this process (a subprocess costs seconds of imports): exit code and stderr."""
    from sweeper.run import main

    code = main(list(args))
    return code, capsys.readouterr().err


def test_cli_db_in_a_missing_directory_is_a_clear_error(tmp_path, capsys):
    import ray

    code, err = _main(capsys, "--spec", "tiny", "--home", str(tmp_path), "--db", f"sqlite:///{tmp_path}/no/such/dir/r.db")
    assert code == 2 and f"directory {tmp_path}/no/such/dir does not exist" in err and "Traceback" not in err
    assert not ray.is_initialized()


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


SOURCES = GOOD.replace('[recipes.scratch]', '[recipes.scratch]\nsources = ["chexpert"]') + \
    '[data]\ntarget = ""\nsize = 32\nfolds = 3\nsources = { chexpert = "" }\n'


def test_data_locations_come_from_the_command_line_then_the_environment_then_the_spec():
    from sweeper.datasets import locations

    spec = parse_spec(SOURCES)
    env = {"CXR_SWEEP_DATA_TARGET": "/env/target", "CXR_SWEEP_DATA_CHEXPERT": "/env/chexpert"}
    assert locations(spec, {"target": "/cli/target"}, env) == {"target": "/cli/target", "chexpert": "/env/chexpert"}
    spec_given = parse_spec(SOURCES.replace('target = ""', 'target = "phantom"'))
    assert locations(spec_given, {}, {"CXR_SWEEP_DATA_CHEXPERT": "/c"})["target"] == "phantom"


def test_every_missing_data_location_is_named_with_the_option_that_gives_it():
    from sweeper.datasets import locations

    with pytest.raises(SpecError) as info:
        locations(parse_spec(SOURCES), {}, {})
    message = str(info.value)
    assert "data set 'target': pass --data target=PATH" in message and "CXR_SWEEP_DATA_TARGET" in message
    assert "data set 'chexpert': pass --data chexpert=PATH" in message and "CXR_SWEEP_DATA_CHEXPERT" in message
    with pytest.raises(SpecError, match="has no data set 'nih'; its data sets: \\['target', 'chexpert'\\]"):
        locations(parse_spec(SOURCES), {"nih": "/x"}, {})


def test_the_paper_spec_without_data_stops_before_ray_naming_what_to_pass(tmp_path, capsys):
    code, err = _main(capsys, "--spec", "paper", "--home", str(tmp_path))
    assert code == 2 and "pass --data target=PATH" in err and "--data nih=PATH" in err
    assert not (tmp_path / "ray").exists()


def test_a_malformed_data_option_is_one_clear_error(tmp_path, capsys):
    code, err = _main(capsys, "--spec", "tiny", "--home", str(tmp_path), "--data", "chexpert")
    assert code == 2 and "--data 'chexpert': expected NAME=LOCATION" in err


def test_a_prepared_chexpert_set_must_have_the_specs_uncertainty_policy(chexpert_prepared_dir, prepared_dir, tmp_path):
    from sweeper.datasets import ensure_datasets

    spec = parse_spec(SOURCES)  # chexpert_policy defaults to u_ones; the fixture was built with u_ignore
    given = {"target": str(prepared_dir), "chexpert": str(chexpert_prepared_dir)}
    with pytest.raises(SpecError, match="uncertainty policy 'u_ignore' but data.chexpert_policy is 'u_ones'"):
        ensure_datasets(spec, tmp_path, given=given)
    spec = parse_spec(SOURCES.replace("folds = 3\n", 'folds = 3\nchexpert_policy = "u_ignore"\n'))
    assert ensure_datasets(spec, tmp_path, given=given)["chexpert"] == chexpert_prepared_dir


def test_pretrain_init_is_only_for_mixed_recipes():
    with pytest.raises(SpecError, match="pretrain_init is for strategy 'mixed'"):
        parse_spec(GOOD.replace('[recipes.scratch]', '[recipes.scratch]\npretrain_init = "imagenet"'))


def test_the_paper_grid_has_its_eight_source_rows_and_shares_pretraining_stages():
    from pathlib import Path

    from sweeper.plan import study_plans
    from trainables.config import fit_config

    spec, _ = load_spec("paper")
    data = {"target": Path("/d/target"), "chexpert": Path("/d/chexpert"), "nih": Path("/d/nih")}
    plans = study_plans(spec, data, pretrain_cache=Path("/d/pretrained"))
    assert len(plans) == 2 * 8 * 5 and {p.config["backbone"] for p in plans} == {"resnet50", "densenet121"}
    configs = {(p.config["backbone"], p.config["recipe"]): fit_config(p.config)
               for p in plans if p.config["outer_fold"] == 0}
    row, mixed = configs["resnet50", "chexpert"], configs["resnet50", "imagenet_chexpert_mixed"]
    assert mixed.strategy == "mixed" and mixed.init == "imagenet"
    assert mixed.stage() == row.stage()  # the mixed model's pretrained branch is the CheXpert row's, trained once
    assert configs["resnet50", "imagenet_chexpert"].stage().init == "imagenet"
    cotrained = configs["densenet121", "chexpert_nih_cotrained"].stage()
    assert cotrained.strategy == "co_trained" and cotrained.sources == ("/d/chexpert", "/d/nih")
    assert configs["resnet50", "imagenet"].stage() is None
    assert row.loss == "batch_weighted_bce" and row.batch_size == 16 and row.epochs == 30


AXES = GOOD.replace('recipe = ["scratch"]', 'recipe = ["scratch", "imagenet"]') + '[recipes.imagenet]\ninit = "imagenet"\n'


def test_further_grid_axes_make_cells_and_fix_what_they_name():
    from pathlib import Path

    from sweeper.plan import study_plans

    spec = parse_spec(AXES.replace("[grid]", "[grid]\nloss = [\"bce\", \"weighted_bce\"]\nlr = [0.01, 0.001]\n"
                                   "exclude = [{ recipe = \"imagenet\", lr = 0.01 }]"))
    cells = spec.grid.cells()
    assert len(cells) == 2 * 2 * 2 - 2  # imagenet with lr 0.01 left out, for both losses
    plans = study_plans(spec, {"target": Path("/t")}, Path("/p"))
    keys = {p.key for p in plans if p.key.endswith("fold0")}
    assert "resnet18/scratch/loss=weighted_bce,lr=0.01/fold0" in keys and not any("imagenet/loss=bce,lr=0.01" in k for k in keys)
    plan = next(p for p in plans if p.key == "resnet18/scratch/loss=weighted_bce,lr=0.01/fold0")
    assert plan.config["loss"] == "weighted_bce" and plan.config["lr"] == 0.01 and plan.config["variant"] == "loss=weighted_bce,lr=0.01"
    assert set(plan.space) == {"dropout"}  # lr is fixed by the grid, dropout still searched


@pytest.mark.parametrize("grid, expected", [
    ("lrr = [0.1]", "unknown grid axis 'lrr'"),
    ("loss = [\"focal\"]", "Input should be 'bce', 'weighted_bce' or 'batch_weighted_bce'"),
    ("lr = [-1]", "grid.lr: -1 is not a positive learning rate"),
    ("loss = []", "grid.loss: expected a non-empty list"),
    ("exclude = [{ backbone = \"resnet18\" }]", "grid.exclude leaves no cell to run"),
    ("exclude = [{ colour = \"red\" }]", "must name some of the grid's axes"),
])
def test_bad_grid_axes_name_their_key(grid, expected):
    with pytest.raises(SpecError, match=re.escape(expected)):
        parse_spec(AXES.replace("[grid]", "[grid]\n" + grid))


def test_a_cell_that_cannot_run_is_refused_with_the_exclude_that_fixes_it():
    spec = AXES.replace('backbone = ["resnet18"]', 'backbone = ["resnet18", "alexnet_style"]')
    with pytest.raises(SpecError, match=re.escape('cell alexnet_style/imagenet needs ImageNet weights')):
        parse_spec(spec)
    fixed = spec.replace("[grid]", '[grid]\nexclude = [{ backbone = "alexnet_style", recipe = "imagenet" }]')
    assert len(parse_spec(fixed).grid.cells()) == 3


def test_fixing_every_searched_parameter_needs_one_trial_per_cell():
    with pytest.raises(SpecError, match="set search.trials = 1"):
        parse_spec(AXES.replace("[grid]", "[grid]\nlr = [0.01]\ndropout = [0.1]") + "[search]\ntrials = 2\n")


def test_the_zhou2020_grid_is_its_networks_losses_and_learning_rates_on_one_holdout_split():
    from pathlib import Path

    from sweeper.plan import study_plans

    spec, _ = load_spec("zhou2020")
    plans = study_plans(spec, {"target": Path("/nih")}, Path("/p"))
    assert len(plans) == 2 * 2 * 4 and spec.folds == [0] and spec.data.holdout == (60, 20, 20)
    pairs = {(p.config["backbone"], p.config["init"]) for p in plans}
    assert pairs == {("alexnet_style", "scratch"), ("mobilenet_v2", "imagenet")}
    assert {p.config["loss"] for p in plans} == {"bce", "weighted_bce"}
    assert {p.config["lr"] for p in plans} == {0.01, 0.001, 0.0001, 0.00001}
    assert all(set(p.space) == {"dropout"} and p.config["batch_size"] == 64 for p in plans)


def test_set_overrides_any_key_with_the_specs_own_validation():
    spec, text = load_spec("paper", ["train.epochs=10", "data.size=256", "search.trials=4",
                                     'grid.backbone=["resnet50"]', "data.target=phantom"])
    assert (spec.train.epochs, spec.data.size, spec.search.trials, spec.grid.backbone) == (10, 256, 4, ["resnet50"])
    assert spec.data.target == "phantom" and parse_spec(text).train.epochs == 10  # the DB keeps it as it ran
    assert text.startswith("# built-in spec 'paper' with --set train.epochs=10")
    with pytest.raises(SpecError, match="train.epochz: unknown key"):
        load_spec("paper", ["train.epochz=3"])
    with pytest.raises(SpecError, match="train.epochs: Input should be greater than or equal to 1"):
        load_spec("paper", ["train.epochs=0"])
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        load_spec("paper", ["train.epochs"])
    with pytest.raises(SpecError, match="data.size is a value, not a table"):
        load_spec("paper", ["data.size.x=1"])


@pytest.mark.parametrize("name", ["paper", "zhou2020"])
def test_smoke_keeps_every_cell_and_stage_and_shrinks_the_rest(name):
    from sweeper.dry_run import dry_run

    full, _ = load_spec(name)
    smoke, text = load_spec(name, smoke=True)
    assert smoke.smoke and smoke.name == f"{name}-smoke" and "smoke = true" in text
    same = (lambda cells: [{k: v for k, v in c.items() if k != "input_size"} for c in cells])  # shrunk with the data
    assert same(smoke.grid.cells()) == same(full.grid.cells())
    plan, small = dry_run(full), dry_run(smoke)
    assert [(c["backbone"], c["recipe"], c["strategy"]) for c in plan["cells"]] == \
        [(c["backbone"], c["recipe"], c["strategy"]) for c in small["cells"]]
    assert [(j["backbone"], j["init"], j["strategy"], j["sources"]) for j in plan["pretrain"]] == \
        [(j["backbone"], j["init"], j["strategy"], j["sources"]) for j in small["pretrain"]]
    assert all(j["epochs"] == 1 for j in small["pretrain"])
    assert (smoke.data.size, smoke.search.trials, smoke.train.epochs, smoke.train.batch_size) == (32, 2, 2, 8)
    assert smoke.folds == ([0] if full.data.holdout else [0, 1])
    assert smoke.train.checkpoint_every == smoke.train.epochs  # a checkpoint only at the end
    assert smoke.resources.gpus_per_trial == 0 and smoke.data.target == "phantom"
    assert all(where.startswith("phantom:") for where in smoke.data.sources.values())
    if name == "zhou2020":  # each backbone's input shrinks with the data: 256 -> 32, 224 -> 28
        assert {(c["backbone"], c["input_size"]) for c in smoke.grid.cells()} == {("alexnet_style", 32),
                                                                                 ("mobilenet_v2", 28)}
    later, _ = load_spec(name, ["train.epochs=3"], smoke=True)  # --set applies after --smoke
    assert later.train.epochs == 3


def test_smoke_of_a_spec_with_the_official_split_and_no_size_runs_on_the_phantom(tmp_path):
    path = tmp_path / "official.toml"
    path.write_text('name = "o"\n[data]\ntarget = ""\nsplit = "official"\n[grid]\nbackbone = ["resnet18"]\n'
                    'recipe = ["s"]\ninput_size = [448]\n[recipes.s]\n')
    spec, _ = load_spec(str(path), smoke=True)
    assert spec.data.target == "phantom" and spec.data.split == "random"
    assert spec.grid.cells()[0]["input_size"] == 28  # the default data.size (512) shrinks to 32, 448 to 28


def test_the_demo_covers_seed_000s_three_perspectives_offline_with_sources_bigger_than_its_target():
    """`make demo` must show backbone, source and combination tables and a transfer effect per backbone,
    with no ImageNet file (it runs offline): checked on its plan, which builds nothing."""
    import json

    proc = subprocess.run([sys.executable, "-m", "sweeper.run", "--dry-run", "--json"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout)
    cells = plan["cells"]
    backbones = {c["backbone"] for c in cells}
    assert len(backbones) == 2 and plan["imagenet_weights"]["files"] == []
    for backbone in backbones:
        mine = [c for c in cells if c["backbone"] == backbone]
        assert {c["strategy"] for c in mine} == {"regular", "mixed", "co_trained"}  # combination
        regular_sources = {tuple(c["sources"]) for c in mine if c["strategy"] == "regular"}
        assert {(), ("phantom_nih",), ("phantom_chexpert",)} <= regular_sources  # source, scratch included
    assert {c["recipe"] for c in cells if c["backbone"] == "resnet18"} == {
        c["recipe"] for c in cells if c["backbone"] != "resnet18"}  # backbone: every recipe on both
    data = plan["data"]
    # sources bigger than the target, as real ones are (300 patients against 160)
    assert min(data[s]["images"] for s in ("phantom_nih", "phantom_chexpert")) >= 1.5 * data["target"]["images"]


def test_every_train_and_recipe_setting_reaches_fit_config_and_an_unknown_key_is_refused_at_each_layer(tmp_path):
    """The spec's [train] and recipes, the trial config and the checkpoint's config are one contract with
    trainables.FitConfig: nothing is dropped on the way without a word."""
    from sweeper.plan import study_plans
    from sweeper.spec import Recipe, Train
    from trainables.config import METADATA_FIELDS, FitConfig, fit_config

    assert set(Train.model_fields) <= set(FitConfig.model_fields) | set(METADATA_FIELDS)  # one contract
    spec, _ = load_spec("paper")
    data = {name: tmp_path / name for name in ("target", "chexpert", "nih")}
    for plan in study_plans(spec, data, tmp_path / "cache"):
        config = fit_config({**plan.config, "study": plan.key, "optuna_number": 0})  # what a trial receives
        recipe = spec.recipes[plan.config["recipe"]]
        assert config.strategy == recipe.strategy and config.pretrain_epochs == recipe.pretrain_epochs
        assert len(config.pretrain_dirs) == len(recipe.sources) and config.epochs == spec.train.epochs
        assert config.augment == spec.train.augment
    assert set(Recipe.model_fields) == {"init", "strategy", "sources", "pretrain_init", "pretrain_epochs", "pretrain_lr"}
    with pytest.raises(SpecError, match="train.new_setting: unknown key"):  # the spec file
        parse_spec(GOOD + "[train]\nnew_setting = 1\n")
    with pytest.raises(SpecError, match="unknown grid axis 'new_setting'"):  # a grid axis
        parse_spec(GOOD.replace('recipe = ["scratch"]', 'recipe = ["scratch"]\nnew_setting = [1, 2]'))
    trial = {**plan.config, "new_setting": 1}  # the trial config (and a checkpoint's, which predict reads)
    with pytest.raises(ValueError, match=r"new_setting: neither a FitConfig field"):
        fit_config(trial)


def test_build_and_phantom_settings_are_each_defined_once_and_an_unknown_key_is_refused_at_each_layer(tmp_path,
                                                                                                    capsys):
    """data_prep's BuildSettings and phantom's PhantomSettings are the one contract of the build and phantom
    settings: the command lines' flags, the spec's [data], [data.prepare.NAME] and [data.phantom] tables and the
    models have the same fields and defaults, and each layer refuses a key it does not know, naming it."""
    from pydantic import ValidationError

    from data_prep import build as prepare
    from data_prep import folds
    from data_prep.settings import BuildSettings
    from data_prep.sources import NihOptions
    from phantom import generate as phantom
    from phantom.generate import make_phantom_set
    from phantom.settings import PhantomSettings
    from sweeper.spec import DATA_SETTINGS, PREPARE_SETTINGS, Data, Prepare
    from vocab import cli

    # one field, so one default, range, check and description, wherever a setting is set
    assert {*DATA_SETTINGS, *PREPARE_SETTINGS} == set(BuildSettings.model_fields) - {"workers", "source"}
    for table, names in ((Data, DATA_SETTINGS), (Prepare, PREPARE_SETTINGS)):
        for name in names:
            ours, model = table.model_fields[name], BuildSettings.model_fields[name]
            assert (ours.annotation, ours.default, ours.metadata, ours.description) == (
                model.annotation, model.default, model.metadata, model.description), name
    assert Data.model_fields["phantom"].annotation is PhantomSettings
    spec = parse_spec(GOOD)
    assert spec.data.settings() == BuildSettings() and spec.data.size == 512 and spec.data.phantom == PhantomSettings()
    parsed = {module: cli.build_parser(module.COMMAND, module.add_arguments) for module in (prepare, folds, phantom)}
    assert parsed[prepare].parse_args(["nih", "--images", "i", "--labels", "l", "--out", "o"]).settings == \
        BuildSettings(source=NihOptions())  # no flag given: the model's defaults
    assert parsed[folds].parse_args(["--labels", "l", "--out", "o"]).settings == BuildSettings()
    assert parsed[phantom].parse_args(["nih", "--out", "o"]).settings == PhantomSettings()
    flags = {module: {o for a in parser._actions for o in a.option_strings} for module, parser in parsed.items()}
    assert {cli.flag_name(n) for n in BuildSettings.model_fields if n != "source"} <= flags[prepare]
    assert {cli.flag_name(n) for n in PhantomSettings.model_fields if n != "source_patients"} <= flags[phantom]

    # an unknown key: the command line (its --help lists the flags above), the spec's three tables, the models
    for module, argv in ((prepare, ["nih", "--images", "i", "--labels", "l", "--out", "o", "--bitz", "16"]),
                         (folds, ["--labels", "l", "--out", "o", "--fold", "3"]),
                         (phantom, ["nih", "--out", "o", "--n-patient", "3"])):
        assert module.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: unrecognized arguments: {argv[-2]} ") and len(err.splitlines()) == 1, err
    for table, expected in (("[data]\nsizes = 32\n", "data.sizes: unknown key; expected any of size, folds, split, "
                                                      "holdout, seed, target"),
                            ("[data.prepare.target]\nsizes = 32\n", "data.prepare.target: sizes: unknown option; "
                                                                    "expected bits, near_duplicates, allow_missing"),
                            ("[data.phantom]\nsize = 64\n", "data.phantom: size: unknown setting; expected any of "
                                                            "n_patients, source_patients, image_px")):
        with pytest.raises(SpecError, match=re.escape(expected)):
            parse_spec(GOOD + table)
    with pytest.raises(ValidationError, match="sizes: unknown setting; expected any of size, folds, split"):
        BuildSettings(sizes=32)
    with pytest.raises(ValidationError, match="size: unknown setting; expected any of n_patients"):
        make_phantom_set(tmp_path, "nih", size=64)  # the generator's old name of image_px


BUILT_BEFORE = {  # what each set of the built-in specs hashed into its prepared id before the settings were one model
    ("tiny", "target", "target", ()): '{"bits": 8, "folds": 2, "near_duplicates": 0.9, "seed": 0, "size": 32, "source": '
                                      '{"discarded_only": "drop", "kind": "target", "mapping": "seed000_target"}}',
    # the demo's: 2 folds since it was sized for a first run within minutes (issue 29), otherwise as before
    ("demo", "phantom_nih", "nih", ()): '{"bits": 8, "folds": 2, "near_duplicates": 0.9, "seed": 0, "size": 64, '
                                        '"source": {"kind": "nih", "preset": "none", "seed": 0}}',
    ("zhou2020", "target", "nih", ()): '{"bits": 8, "folds": 1, "holdout": [0.6, 0.2, 0.2], "near_duplicates": 0.9, '
                                       '"seed": 0, "size": 256, "source": {"kind": "nih", "preset": "none", "seed": 0}}',
    ("paper", "target", "chexpert", ('data.split="official"',)): (
        '{"bits": 8, "folds": 1, "near_duplicates": 0.9, "seed": 0, "size": 512, "source": {"all_labels": false, '
        '"blank": "negative", "frontal_only": false, "kind": "chexpert", "policy": "u_ones"}, "split": "official"}'),
}


@pytest.mark.parametrize("name, data_set, kind, overrides", BUILT_BEFORE, ids=[k[0] for k in BUILT_BEFORE])
def test_the_built_in_specs_build_their_sets_with_the_settings_and_phantom_folders_they_had(name, data_set, kind,
                                                                                            overrides):
    """Same settings, same prepared ids and same phantom cache folders: a built-in spec's data are not rebuilt."""
    import json

    from sweeper.datasets import _params, phantom_folder

    spec, _ = load_spec(name, list(overrides))
    settings = _params(spec, data_set, kind, data_set == "target")
    assert json.dumps(settings.hashed(), sort_keys=True) == BUILT_BEFORE[(name, data_set, kind, overrides)]
    demo = load_spec("demo")[0].data.phantom  # its target, sources (seed offsets 1, 2) and external set (100)
    assert [phantom_folder(k, demo.of_set(k, offset)) for k, offset in (("target", 0), ("chexpert", 1),
                                                                         ("nih", 2), ("target", 100))] == [
        "target-n160-px128-p0.3-seed0", "chexpert-n300-px128-p0.3-seed1", "nih-n300-px128-p0.3-seed2",
        "target-n160-px128-p0.3-seed100"]
    noisy = demo.model_copy(update={"label_noise": 0.1, "refiled": 0.05})  # a setting off its default is named
    assert phantom_folder("nih", noisy.of_set("nih", 2)) == "nih-n300-px128-p0.3-seed2-noise0.1-refiled0.05"


SEEDED = GOOD + '[data]\nsize = 32\nfolds = 3\nphantom = { n_patients = 12, image_px = 48, seed = 4 }\n'


def test_data_seed_draws_the_folds_and_train_seed_does_not(tmp_path):
    """A seed replicate (train.seed) trains on the same outer folds; data.seed draws other ones, and a prepared
    target drawn with another seed than the spec's is refused."""
    from data_prep.dataset import PreparedDataset
    from sweeper.datasets import ensure_datasets

    path = tmp_path / "seeded.toml"
    path.write_text(SEEDED)
    home = tmp_path / "home"
    target = lambda *sets: ensure_datasets(load_spec(str(path), list(sets))[0], home, log=lambda *_: None)["target"]  # noqa: E731
    first = target()
    assert target("train.seed=1") == first  # the same set: same id, same folds
    other = target("data.seed=1")
    assert other != first and PreparedDataset(other).manifest["params"]["seed"] == 1
    assert (PreparedDataset(other).folds != PreparedDataset(first).folds).any()
    with pytest.raises(SpecError, match="its folds were drawn with seed 0 but data.seed is 1; set data.seed = 0"):
        ensure_datasets(load_spec(str(path), ["data.seed=1"])[0], home, given={"target": str(first)})


def test_one_list_of_uncertainty_policies_and_one_declaration_of_imagenet_weights(capsys):
    import typing

    from data_prep.sources.chexpert import UNCERTAIN_AS
    from data_prep.sources.options import Policy
    from sweeper.spec import Data
    from sweeper.weights import main as weights
    from trainables.models import no_imagenet_weights

    assert Data.model_fields["chexpert_policy"].annotation is Policy and set(UNCERTAIN_AS) == set(typing.get_args(Policy))
    assert weights(["--backbone", "resnet18", "alexnet_style", "--check"]) == 2
    said = capsys.readouterr().err
    assert said.startswith(f"error: --backbone alexnet_style: {no_imagenet_weights('alexnet_style')}; ") and \
        len(said.splitlines()) == 1
    with pytest.raises(SpecError, match=re.escape(f"needs ImageNet weights: {no_imagenet_weights('alexnet_style')}")):
        parse_spec(GOOD.replace('["resnet18"]', '["alexnet_style"]').replace("[recipes.scratch]",
                                                                               '[recipes.scratch]\ninit = "imagenet"'))
