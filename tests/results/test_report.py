"""The comparison report, checked against numbers computed here from a hand-built DB (numpy and
scikit-learn, not the results package), on SQLite and PostgreSQL."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from results.load import load
from results.render import latex_text, to_html, to_latex, to_markdown, write
from results.report import build, main
from results.store import ResultsStore
from results.analysis import Analysis, format_p
from results.tables import (CONCLUSION_COLUMN, DELONG_COLUMN, HOLM_COLUMN, TRANSFER_COLUMN, Table, combination_selection,
                            source_selection, transfer_effect)
from tests.handmade_sweep import CELLS, FOLDS, LABELS, build_sweep, write_trial


@pytest.fixture
def handmade(engine_url):
    return engine_url, build_sweep(engine_url)


def _macro_auc(truth, probs):
    scores = [roc_auc_score(truth[~np.isnan(truth[:, j]), j], probs[~np.isnan(truth[:, j]), j])
              for j in range(truth.shape[1])]
    return float(np.mean(scores))


def test_cell_means_and_sds_equal_the_selected_trials_numbers(handmade):
    url, expected = handmade
    cells = Analysis(load(url, "handmade"), n_boot=0).cells.set_index(["backbone", "recipe"])
    for (backbone, recipe), folds in expected.selected.items():
        row = cells.loc[(backbone, recipe)]
        for column, key in (("auc", "test_auc"), ("ap", "test_ap"), ("hamming", "test_hamming"),
                            ("train_binary_acc", "outer_train_binary_acc"), ("train_mae", "outer_train_mae")):
            values = np.array([f[key] for f in folds])
            assert row[f"{column}_mean"] == pytest.approx(values.mean()), (backbone, recipe, column)
            assert row[f"{column}_sd"] == pytest.approx(values.std(ddof=1)), (backbone, recipe, column)
        assert row["folds_done"] == len(FOLDS)


def test_pooled_auc_and_its_interval_come_from_the_selected_trials_predictions(handmade):
    url, expected = handmade
    cells = Analysis(load(url, "handmade"), n_boot=300).cells.set_index(["backbone", "recipe"])
    for key, probs in expected.pooled.items():
        row = cells.loc[key]
        assert row["auc_pooled"] == pytest.approx(_macro_auc(expected.truth, probs))
        assert row["auc_ci_low"] < row["auc_pooled"] < row["auc_ci_high"]


def test_source_and_combination_tables_split_the_recipes_as_the_paper_does(handmade):
    url, _ = handmade
    analysis = Analysis(load(url, "handmade"), n_boot=0)
    source = {t.key: t for t in source_selection(analysis)}
    combination = {t.key: t for t in combination_selection(analysis)}
    assert sorted(source) == ["source_selection_densenet121", "source_selection_resnet50"]
    assert set(source["source_selection_resnet50"].display["Dataset"]) == {"none (scratch)", "ImageNet", "nih"}
    table = combination["combination_selection_resnet50"].display
    assert set(table["Method"]) == {"Regular transfer learning", "Mixed model", "Co-trained"}
    assert "ImageNet + nih" in set(table["Dataset"])


def test_rows_are_ranked_by_test_auc_with_a_paired_p_value_against_the_first(handmade):
    url, expected = handmade
    analysis = Analysis(load(url, "handmade"), n_boot=400)
    table = next(t for t in source_selection(analysis) if t.key == "source_selection_resnet50").numbers
    pooled = table["auc_pooled"].tolist()
    assert pooled == sorted(pooled, reverse=True)
    assert np.isnan(table["vs_best_p"].iloc[0]) and 0 < table["vs_best_p"].iloc[1] <= 1
    # nih (signal 2.4) against imagenet (1.6) on the same images: the sign follows the pooled AUCs
    pooled = {r: _macro_auc(expected.truth, expected.pooled[("resnet50", r)]) for r in ("nih", "imagenet")}
    second = table.iloc[1]
    first = table.iloc[0]
    assert second["vs_best_diff"] == pytest.approx(pooled[second.recipe] - pooled[first.recipe], abs=1e-9)


def test_a_much_weaker_cell_is_significantly_worse(handmade):
    url, _ = handmade
    analysis = Analysis(load(url, "handmade"), n_boot=500)
    compared = analysis.compare(("resnet50", "mixed_nih", ""), ("resnet50", "nih", ""), "auc")
    assert compared.difference < -0.2 and compared.p_value < 0.01


def test_a_ranked_table_gives_holm_adjusted_p_values_beside_the_raw_ones(handmade):
    """k rows against the first are k-1 tests: each adjusted p is Holm's (statsmodels) of the table's raw ones."""
    from statsmodels.stats.multitest import multipletests

    url, _ = handmade
    for table in source_selection(Analysis(load(url, "handmade"), n_boot=300)):
        numbers = table.numbers.dropna(subset=["vs_best_p"])
        assert len(numbers) >= 2
        raw = np.maximum(numbers["vs_best_p"], 2.0 / 301)  # a p at the resamples' floor enters as the floor
        assert numbers["vs_best_p_holm"].tolist() == pytest.approx(multipletests(raw, method="holm")[1].tolist())
        assert (numbers["vs_best_p_holm"] >= numbers["vs_best_p"]).all()
        shown = table.display[HOLM_COLUMN]
        assert shown.iloc[0] == "" and sum(t.startswith("p") for t in shown[1:]) == len(numbers)


def test_the_backbone_table_adjusts_each_recipes_ranking_on_its_own_and_every_note_says_which_family(handmade):
    """Holm over each recipe's k-1 comparisons (statsmodels on that recipe's raw p), not over the whole table,
    as its note and the summary say; the conclusion's p is unadjusted and its column says so."""
    from statsmodels.stats.multitest import multipletests

    url, _ = handmade
    built = build(url, "handmade", n_boot=20, figures=False)
    tables = {t.key: t for _, ts, _ in built.sections for t in ts}
    table = tables["backbone_selection"]
    numbers = table.numbers.dropna(subset=["vs_best_delong_p"])
    for _, part in numbers.groupby("recipe"):
        assert part["vs_best_delong_p_holm"].tolist() == pytest.approx(
            multipletests(part["vs_best_delong_p"], method="holm")[1].tolist())
    whole = multipletests(numbers["vs_best_delong_p"], method="holm")[1]
    assert not np.allclose(whole, numbers["vs_best_delong_p_holm"])  # one family per recipe is a different number
    assert "over each recipe's own k-1 comparisons" in table.note and "not the whole table" in table.note
    assert all("over this table's k-1 comparisons" in t.note for k, t in tables.items() if k.startswith(
        ("source_selection", "combination_selection")))
    summary = " ".join(built.summary)
    assert "the backbone table once per recipe" in summary and "over a table's comparisons" not in summary
    assert "unadjusted" in CONCLUSION_COLUMN and "unadjusted for multiple comparisons" in tables["conclusion"].note
    assert "unadjusted" in TRANSFER_COLUMN and "unadjusted" in tables["transfer_effect"].note


@pytest.mark.parametrize("p, bound, shown", [
    (6.34e-35, False, "p<0.001"), (0.00099, False, "p<0.001"), (0.001, False, "p=0.001"), (0.00234, False, "p=0.002"),
    (0.0123, False, "p=0.01"), (0.456, False, "p=0.46"), (1.0, False, "p=1.00"),
    (2 / 1001, True, "p<=0.002"), (2 / 301, True, "p<=0.007"), (2 / 41, True, "p<=0.05"), (2 / 10001, True, "p<0.001")])
def test_p_values_are_printed_at_the_precision_their_method_supports(p, bound, shown):
    """Two decimals from 0.01, three below, '<0.001' below that (a normal tail of 1e-35 on 100 patients is no
    number); an upper bound (a bootstrap p at its floor) rounds up, so that it stays one."""
    assert format_p(p, bound) == shown


def test_no_p_in_any_table_is_printed_beyond_what_its_method_supports(handmade, tmp_path):
    """The handmade sweep's strongest cell against its weakest: DeLong's normal tail is far below 0.001."""
    url, _ = handmade
    built = build(url, "handmade", n_boot=20, figures=False)
    tables = {t.key: t for _, ts, _ in built.sections for t in ts}
    delong = tables["source_selection_resnet50"].numbers["vs_best_delong_p"]
    assert delong.min() < 1e-4  # the CSV keeps the raw value
    shown = tables["source_selection_resnet50"].display[DELONG_COLUMN]
    assert any(t.startswith("p<0.001 (Holm p<0.001)") for t in shown)
    text = to_markdown(built, figure_dir=None)
    assert not re.search(r"p\s*(=|<=?)\s*\d(\.\d+)?e-?\d", text, re.IGNORECASE)  # no scientific notation
    assert not re.search(r"p(=|<=)0\.\d{4}", text)  # nor a fourth decimal
    written = write(built, tmp_path / "r")
    latex = (tmp_path / "r" / "tables" / "source_selection_resnet50.tex").read_text()
    assert r"p\textless{}0.001" in latex and "<" not in latex  # LaTeX's default fonts print < as another glyph
    assert "p&lt;0.001" in written["html"].read_text()


def _clustered_macro_delong_pairwise(truth, a, b, patients):
    """The cluster-robust macro DeLong from DeLong et al.'s pairwise kernel (no midranks): per class each known
    image's V10 or V01 difference, scaled by sqrt(m (m - 1)) or sqrt(n (n - 1)), averaged over classes,
    summed per patient; z from the sum of squares."""
    from scipy.stats import norm

    share, diffs = np.zeros(len(truth)), []
    for k in range(truth.shape[1]):
        known = np.flatnonzero(~np.isnan(truth[:, k]))
        pos, neg = known[truth[known, k] == 1], known[truth[known, k] == 0]
        kernel = [(s[pos, k][:, None] > s[neg, k][None, :]) + 0.5 * (s[pos, k][:, None] == s[neg, k][None, :])
                  for s in (a, b)]
        diff = kernel[0].mean() - kernel[1].mean()
        diffs.append(diff)
        share[pos] += (kernel[0].mean(axis=1) - kernel[1].mean(axis=1) - diff) / np.sqrt(len(pos) * (len(pos) - 1))
        share[neg] += (kernel[0].mean(axis=0) - kernel[1].mean(axis=0) - diff) / np.sqrt(len(neg) * (len(neg) - 1))
    totals = pd.Series(share / truth.shape[1]).groupby(patients).sum()
    return 2 * norm.sf(abs(np.mean(diffs)) / np.sqrt((totals ** 2).sum()))


def test_a_ranked_table_gives_delongs_p_clustered_by_patient_with_its_holm_adjustment(handmade):
    from statsmodels.stats.multitest import multipletests

    url, expected = handmade
    for table in source_selection(Analysis(load(url, "handmade"), n_boot=50)):
        numbers = table.numbers
        first = tuple(numbers.iloc[0][["backbone", "recipe"]])
        p = [_clustered_macro_delong_pairwise(expected.truth, expected.pooled[tuple(row)], expected.pooled[first],
                                              expected.patients)
             for row in numbers.iloc[1:][["backbone", "recipe"]].itertuples(index=False)]
        assert numbers["vs_best_delong_p"].iloc[1:].tolist() == pytest.approx(p, rel=1e-6)
        assert numbers["vs_best_delong_p_holm"].iloc[1:].tolist() == pytest.approx(
            multipletests(p, method="holm")[1].tolist(), rel=1e-6)
        assert table.display[DELONG_COLUMN].iloc[0] == "" and all("(Holm " in t for t in table.display[DELONG_COLUMN][1:])


def test_the_transfer_effect_table_compares_every_cell_with_its_backbones_scratch_cell(handmade):
    url, expected = handmade
    analysis = Analysis(load(url, "handmade"), n_boot=400)
    (table,) = transfer_effect(analysis)
    numbers = table.numbers.set_index(["backbone", "recipe"])
    planned = [(b, r) for b in CELLS for r in CELLS[b] if r != "scratch"] + [("resnet50", "co_trained")]
    assert sorted(numbers.index) == sorted(planned)
    assert np.isnan(numbers.loc[("resnet50", "co_trained"), "auc_diff"])  # planned, never run: no number
    for (backbone, recipe), row in numbers.drop(index=[("resnet50", "co_trained")]).iterrows():
        pooled = {r: _macro_auc(expected.truth, expected.pooled[(backbone, r)]) for r in (recipe, "scratch")}
        assert row["auc_diff"] == pytest.approx(pooled[recipe] - pooled["scratch"], abs=1e-9)
        assert row["auc_diff_ci_low"] < row["auc_diff"] < row["auc_diff_ci_high"]
    shown = table.display.set_index(["Backbone", "Recipe"])["Shown"]
    assert shown[("resnet50", "nih")] == "helps"  # signal 2.4 against 0.3
    assert shown[("resnet50", "mixed_nih")] != "helps"  # 0.2 against 0.3
    assert re.match(r"^[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] \(p", table.display[TRANSFER_COLUMN][0])


def test_an_unfinished_sweep_marks_missing_cells_and_folds(handmade):
    url, _ = handmade
    built = build(url, "handmade", n_boot=0, figures=False)
    text = to_markdown(built, figure_dir=None)
    assert "resnet50/co_trained: 0/3" in text
    combination = next(t for h, ts, _ in built.sections for t in ts if t.key == "combination_selection_resnet50")
    row = combination.display[combination.display["Recipe"] == "co_trained"].iloc[0]
    assert row["Folds"] == "0/3" and row["Test AUC; pooled [95% CI]"] == "missing"


def test_the_conclusion_names_the_best_recipe_per_backbone(handmade):
    url, expected = handmade
    built = build(url, "handmade", n_boot=200, figures=False)
    conclusion = next(t for h, ts, _ in built.sections for t in ts if t.key == "conclusion").display
    for backbone in CELLS:
        pooled = {r: _macro_auc(expected.truth, expected.pooled[(backbone, r)]) for r in CELLS[backbone]}
        row = conclusion[conclusion["Backbone"] == backbone].iloc[0]
        assert row["Best recipe"] == max(pooled, key=pooled.get)
        assert row["Pooled test AUC [95% CI]"].startswith(f"{max(pooled.values()):.3f} [")
        assert re.search(r"^[+-]\d\.\d{3} \(p(=0\.\d\d\d?|=1\.00|<=0\.\d\d\d?|<0\.001)\)$", row[CONCLUSION_COLUMN])


def test_per_class_table_shows_prevalence_and_each_cells_auc(handmade):
    url, expected = handmade
    built = build(url, "handmade", n_boot=0, figures=False)
    table = next(t for h, ts, _ in built.sections for t in ts if t.key == "per_class_resnet50").display
    assert table["Class"].tolist() == sorted(LABELS)
    folds = expected.selected[("resnet50", "nih")]
    auc = np.mean([f["test_auc_per_class"][LABELS.index("Effusion")] for f in folds])
    assert table.set_index("Class").loc["Effusion", "nih AUC"] == f"{auc:.3f}"


def test_loss_comparison_appears_when_cells_differ_only_in_their_loss(engine_url):
    """Seed 003's grid: loss x learning rate; each row names its rate, so the two bce rows differ."""
    rng = np.random.default_rng(1)
    store = ResultsStore(engine_url)
    sweep = store.start_sweep("losses", "seed003", "", "test", [0], 1)
    cells = [(loss, lr) for lr in ("0.01", "0.001") for loss in ("bce", "weighted_bce")]
    store.register_cells(sweep, [{"backbone": "alexnet_style", "recipe": "scratch", "variant": f"loss={loss},lr={lr}",
                                  "settings": {"loss": loss}} for loss, lr in cells])
    truth = (rng.random((80, 2)) < 0.3).astype(float)
    patients = [f"p{i // 2}" for i in range(80)]
    for (loss, lr), probs in zip(cells, [np.full((80, 2), 0.1), np.where(truth == 1, 0.7, 0.4)] * 2):
        key = f"t-{loss}-{lr}"
        said = probs > 0.5
        result = {"epoch": 1, "best_val_auc": 0.7, "test_binary_acc": float((said == (truth == 1)).mean()),
                  "test_fnr": float((~said & (truth == 1)).sum() / (truth == 1).sum()), "test_auc": 0.5,
                  "test_exact_match": float((said == (truth == 1)).all(axis=1).mean())}
        write_trial(store, sweep, key, backbone="alexnet_style", variant=f"loss={loss},lr={lr}", study=key,
                    result=result, labels=["a", "b"], predictions={"test": {"image_keys": [f"i{i}" for i in range(80)],
                                                                            "patient_keys": patients, "probs": probs,
                                                                            "labels": truth}})
    built = build(engine_url, "losses", n_boot=300, figures=False)
    table = next(t for h, ts, _ in built.sections for t in ts if t.key == "loss_comparison").display
    assert table["Loss"].tolist() == ["bce", "weighted_bce"] * 2
    assert table["Other settings"].tolist() == ["lr=0.001", "lr=0.001", "lr=0.01", "lr=0.01"]
    assert not table[["Backbone", "Recipe", "Loss", "Other settings"]].duplicated().any()
    assert table["False-negative rate"].iloc[0].startswith("100.00%")
    assert table["False-negative rate"].iloc[1].startswith("0.00%; vs bce: -100.00 points (p<=0.007)")  # 300 resamples: 2/301 rounded up


def test_report_cli_writes_markdown_html_latex_csv_and_figures(handmade, tmp_path, capsys):
    url, _ = handmade
    out = tmp_path / "report"
    assert main(["--db", url, "--sweep", "handmade", "--out", str(out), "--bootstrap", "100"]) == 0
    printed = capsys.readouterr().out
    assert printed.rstrip("\n") == (out / "report.md").read_text().rstrip("\n")
    assert "## Source data selection" in printed
    for stem in ("source_selection_resnet50", "combination_selection_densenet121", "backbone_selection",
                 "conclusion", "per_class_resnet50", "operating_points_resnet50", "calibration_densenet121"):
        assert (out / "tables" / f"{stem}.tex").read_text().startswith("\\begin{table}")
        assert len(pd.read_csv(out / "tables" / f"{stem}.csv")) > 0
    for stem in ("backbone_selection_auc", "backbone_selection_ap", "backbone_selection_hamming", "roc_pr_resnet50",
                 "learning_curves_resnet50", "learning_rate_densenet121", "accuracy_over_epochs_resnet50",
                 "reliability_resnet50"):
        assert (out / "figures" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_summary_and_every_table_name_the_split_and_its_folds_hash(handmade, tmp_path):
    from tests.handmade_sweep import FOLDS_SHA256

    url, _ = handmade
    built = build(url, "handmade", n_boot=20, figures=False)
    split = f"Split: random (patient-grouped folds of the whole target), folds.csv SHA-256 {FOLDS_SHA256}"
    assert any(line.startswith(split) for line in built.summary)
    tables = [t for _, ts, _ in built.sections for t in ts]
    assert len(tables) >= 6 and all(t.note.endswith(split + ".") for t in tables)
    write(built, tmp_path / "r")
    assert FOLDS_SHA256 in (tmp_path / "r" / "tables" / "conclusion.tex").read_text()


def test_report_of_an_unknown_sweep_is_a_clear_error(handmade, capsys):
    url, _ = handmade
    assert main(["--db", url, "--sweep", "nope"]) == 2
    assert "no sweep named 'nope'" in capsys.readouterr().err


HOSTILE = "<script>alert('x')</script> & 50%_$#{}"


def test_user_supplied_names_are_escaped_in_html_and_latex(engine_url):
    store = ResultsStore(engine_url)
    sweep = store.start_sweep("hostile", "x", "", "test", [0], 1)
    store.register_cells(sweep, [{"backbone": "resnet18", "recipe": HOSTILE, "variant": "", "sources": [HOSTILE]}])
    built = build(engine_url, "hostile", n_boot=0, figures=False)
    page = to_html(built)
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; 50%" in page
    table = next(t for h, ts, _ in built.sections for t in ts if t.key == "source_selection_resnet18")
    latex = to_latex(table)
    assert r"50\%\_\$\#\{\}" in latex and r"\textless{}script\textgreater{}" in latex  # LaTeX's, not HTML's
    assert HOSTILE not in latex


def test_latex_captions_are_escaped_by_latex_text_and_cells_by_pandas_public_styler():
    caption = r"a&b%c$d#e_f{g}h~ i^ j\k \ l"  # every LaTeX special character, some before a space
    assert latex_text(caption) == \
        r"a\&b\%c\$d\#e\_f\{g\}h\textasciitilde{} i\textasciicircum{} j\textbackslash{}k \textbackslash{} l"
    assert latex_text("plain text, 0.5 (0.1)") == "plain text, 0.5 (0.1)"
    cell = "50%_$#{} ~x^y\\z & w"
    display = pd.DataFrame({"recipe_{1}": [cell], "AUC": ["0.81 ~ 0.02"]})
    latex = to_latex(Table("k", "T&~", numbers=display, display=display, note="n^2 \\ 100%"))
    assert r"\caption{T\&\textasciitilde{}. n\textasciicircum{}2 \textbackslash{} 100\%}" in latex
    body = display.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    assert body.to_latex(hrules=True) in latex  # headers and cells exactly as pandas' public escaping gives them
    assert latex_text(cell) not in latex  # (which differs from latex_text's for ~ ^ and \\)


def test_file_names_from_user_supplied_names_stay_inside_the_report_folder(engine_url, tmp_path):
    store = ResultsStore(engine_url)
    sweep = store.start_sweep("paths", "x", "", "test", [0], 1)
    store.register_cells(sweep, [{"backbone": "../../escape", "recipe": "r", "variant": ""}])
    written = write(build(engine_url, "paths", n_boot=0, figures=False), tmp_path / "out")
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and (tmp_path / "out") not in p.parents]
    assert all(p.name.startswith("results.db") for p in outside), outside  # the SQLite DB only
    assert (tmp_path / "out" / "tables" / "source_selection_.._.._escape.csv").is_file() and written


def test_html_page_renders_in_headless_chromium_with_its_tables_and_figures(handmade, tmp_path, render_html):
    url, _ = handmade
    out = tmp_path / "report"
    written = write(build(url, "handmade", n_boot=100), out)
    page = render_html(written["html"], tmp_path / "report.png")
    assert page.title == "Sweep handmade: comparison report"
    assert page.tables >= 8  # backbone, 2 source, 2 combination, conclusion, 2 per-class
    assert page.images >= 10 and page.images_loaded == page.images
    assert "Source data selection: resnet50" in page.text and "missing" in page.text


def test_views_give_hand_written_sql_the_reported_numbers(handmade):
    from results.query import run_query

    url, expected = handmade
    summary = run_query(url, "SELECT backbone, recipe, n_folds, mean FROM cell_summary "
                             "WHERE sweep = 'handmade' AND split = 'test' AND metric = 'auc'")
    for row in summary.itertuples():
        assert row.n_folds == 3
        assert row.mean == pytest.approx(np.mean([f["test_auc"] for f in expected.selected[(row.backbone, row.recipe)]]))
    oof = run_query(url, "SELECT COUNT(DISTINCT image_key) AS n FROM oof_predictions "
                         "WHERE backbone = 'resnet50' AND recipe = 'nih'")
    assert oof.iloc[0, 0] == len(expected.truth)
    params = run_query(url, "SELECT params FROM trial_summary WHERE sweep = 'handmade' LIMIT 1").iloc[0, 0]
    assert "lr" in (json.loads(params) if isinstance(params, str) else params)


def test_the_sweep_driver_writes_the_report_with_its_data_sets_and_survives_a_report_failure(tmp_path, capsys,
                                                                                             prepared_dir):
    from sweeper.driver import RunOptions, _print_report

    url = f"sqlite:///{tmp_path}/results.db"
    build_sweep(url, "s1")
    _print_report(RunOptions(name="s1", db_url=url, home=tmp_path, storage=str(tmp_path)), {"target": prepared_dir})
    printed = capsys.readouterr().out
    assert "### Conclusion: best recipe per backbone" in printed and "Data set target" not in printed  # files only
    out = tmp_path / "reports" / "s1"
    page = (out / "report.html").read_text()
    assert f"Data set target ({prepared_dir.name})" in page and "target: label counts at each step" in page
    labels = pd.read_csv(out / "tables" / "data_target_labels.csv")
    assert labels.set_index("label")["positives"].to_dict() == \
        pd.read_csv(prepared_dir / "labels.csv")[labels["label"]].sum().astype(int).to_dict()
    assert (out / "figures" / "data_target_cooccurrence.png").is_file()
    _print_report(RunOptions(name="nope", db_url=url, home=tmp_path, storage=str(tmp_path)), {})
    printed = capsys.readouterr().out
    assert "the report could not be made (QueryError: no sweep named 'nope'" in printed
    assert f"python -m results.report --db {url} --sweep nope" in printed


def test_seed_003s_curves_over_epochs_are_stored_per_epoch_and_drawn(handmade):
    url, _ = handmade
    curves = load(url, "handmade").curves
    assert (curves.val_exact_match == 0.2 + 0.1 * curves.epoch).all() and (curves.val_fnr == 0.5 / curves.epoch).all()
    built = build(url, "handmade", n_boot=20)
    keys = [f.key for _, _, figures in built.sections for f in figures]
    assert "accuracy_over_epochs_resnet50" in keys and "accuracy_over_epochs_densenet121" in keys


def test_a_table_registered_as_a_section_is_in_the_report_and_its_files(tmp_path):
    """docs/design.md §5, "A report table": a function of the sweep's statistics and one Section is all a table
    takes; it is placed where it is registered, with the split note every table gets, and written as CSV and
    LaTeX. About 2 s (the handmade sweep on SQLite, a report without bootstrap or figures)."""
    from results.report import SECTIONS, Options, Section, register_section

    url = f"sqlite:///{tmp_path}/results.db"
    build_sweep(url)

    def trials_per_cell(analysis: Analysis, options: Options) -> list[Table]:
        assert options.subgroup_min == (7, 8)  # what the command line asked for reaches every section
        counts = analysis.data.trials.groupby(["backbone", "recipe"]).size().rename("trials").reset_index()
        return [Table("trials_per_cell", "Trials per cell", counts, counts.astype(str), "Every trial, any status.")]

    section = register_section(Section("Trials", trials_per_cell), before="Conclusion")
    try:
        with pytest.raises(ValueError, match="already has a section 'Trials'"):
            register_section(Section("Trials", trials_per_cell))
        built = build(url, "handmade", n_boot=0, figures=False, subgroup_min=(7, 8))
    finally:
        SECTIONS.remove(section)
    headings = [heading for heading, _, _ in built.sections]
    assert headings.index("Trials") == headings.index("Conclusion") - 1
    (table,) = built.sections[headings.index("Trials")][1]
    counts = table.numbers.set_index(["backbone", "recipe"])["trials"]
    assert counts[("resnet50", "imagenet")] == 2 * len(FOLDS) + 1 and counts[("densenet121", "nih")] == 2 * len(FOLDS)
    assert table.note.startswith("Every trial, any status. Split: random")
    write(built, tmp_path / "report")
    assert "## Trials\n\n### Trials per cell" in (tmp_path / "report" / "report.md").read_text()
    ran = sum(len(recipes) for recipes in CELLS.values())  # cells with trials: 2 a fold, and one failed trial
    assert pd.read_csv(tmp_path / "report" / "tables" / "trials_per_cell.csv")["trials"].sum() == ran * 2 * len(FOLDS) + 1
    assert (tmp_path / "report" / "tables" / "trials_per_cell.tex").is_file()
    assert "Trials" not in [s.heading for s in SECTIONS]
