"""The papers' comparison reports from the results DB.

`cxr-sweep report [--db URL] [--sweep NAME] [--out DIR]` (or `python -m results.report`) prints report.md
and, with --out, writes report.md, report.html (one self-contained page), tables/*.csv and *.tex and
figures/*.png. An unfinished sweep is reported as far as it goes, with missing cells and
folds marked.
"""
from __future__ import annotations

import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from results import tables as paper
from results.load import SweepData, load
from results.render import Report, to_markdown, write
from results.analysis import Analysis
from results.clinical_tables import calibration_tables, clinical, operating_point_tables
from results.external_tables import external_tables
from results.subgroup_tables import MIN_NEGATIVES, MIN_POSITIVES, subgroup_tables
from results.operating_points import RULES, check_rule
from results.tables import Table
from vocab import cli
from vocab.names import cell_name

COMMAND = cli.Command(
    name="report", module="results.report", summary="Write a sweep's comparison report from the results DB.",
    description="Prints report.md; with --out also writes report.html (one self-contained page), tables/*.csv and "
                "*.tex and figures/*.png there. An unfinished sweep is reported as far as it goes, with its missing "
                "cells and folds marked.",
    examples=("--out report/", "--db sqlite:///.cxr-sweep/results.db --sweep demo-20260101-120000 --bootstrap 0",
              "--threshold youden --threshold sensitivity:0.95 --calibrate --out report/"))

# Sections whose figures sit with the tables of the same heading; the rest follow.
FIGURE_SECTIONS = {"Backbone model selection", "Calibration"}


@dataclass(frozen=True)
class Options:
    """What a report is asked for beyond its sweep (the command line's choices); every section is given it."""

    rules: tuple[str, ...] = tuple(RULES)  # operating points' threshold rules
    calibrate: bool = False  # temperature-scaled probabilities beside the raw ones
    subgroup_min: tuple[int, int] = (MIN_POSITIVES, MIN_NEGATIVES)  # a class counts in a subgroup from these


@dataclass(frozen=True)
class Section:
    """One heading of the report and the function that makes its tables from the sweep's statistics (an empty
    list where the sweep has nothing for it: the heading is then left out). Every table of the report is made
    here: adding one is its function and its Section in SECTIONS (docs/design.md §5, "A report table")."""

    heading: str
    tables: Callable[[Analysis, Options], list[Table]]


def _alone(tables: Callable[[Analysis], list[Table]]) -> Callable[[Analysis, Options], list[Table]]:
    """A table function that needs no option."""
    return lambda analysis, _options: tables(analysis)


# The report's sections in order (each table note ends with the split its numbers come from)
SECTIONS: list[Section] = [
    Section("Backbone model selection", _alone(paper.backbone_selection)),
    Section("Source data selection", _alone(paper.source_selection)),
    Section("Combination method selection", _alone(paper.combination_selection)),
    Section("Transfer effect", _alone(paper.transfer_effect)),
    Section("Conclusion", _alone(paper.conclusion)),
    Section("Loss comparison", _alone(paper.loss_comparison)),
    Section("Per-class results", _alone(paper.per_class)),
    Section("Operating points", lambda a, o: operating_point_tables(clinical(a, o.rules, o.calibrate))),
    Section("Calibration", lambda a, o: calibration_tables(clinical(a, o.rules, o.calibrate))),
    Section("Subgroups", lambda a, o: subgroup_tables(a, o.subgroup_min)),
    Section("External validation", _alone(external_tables)),
    Section("All metrics", _alone(paper.all_metrics)),
]


def register_section(section: Section, before: str | None = None) -> Section:
    """Add a section to every report, last or before the section headed `before`; one heading, one section."""
    if any(s.heading == section.heading for s in SECTIONS):
        raise ValueError(f"the report already has a section {section.heading!r}")
    at = [s.heading for s in SECTIONS].index(before) if before is not None else len(SECTIONS)
    SECTIONS.insert(at, section)
    return section


def _summary(data: SweepData, analysis: Analysis) -> list[str]:
    sweep, cells, trials = data.sweep, analysis.cells, data.trials
    counts = trials["status"].value_counts().to_dict() if not trials.empty else {}
    done = int((cells.folds_done >= cells.folds_planned).sum()) if len(cells) else 0
    lines = [f"Sweep {data.name} (spec {sweep['spec_name']}, code {sweep['code_version']}): {sweep['status']}, "
             f"started {sweep['started_at']}" + (f", finished {sweep['finished_at']}" if sweep.get("finished_at")
                                                 and str(sweep["finished_at"]) not in ("None", "NaT") else ""),
             f"{len(cells)} cells x {len(data.folds)} outer folds; {done} cells have every fold",
             "Trials: " + (", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "none yet")]
    missing = cells[cells.folds_done < cells.folds_planned]
    if len(missing):
        lines.append("Missing (cell: folds done/planned): " + "; ".join(
            f"{cell_name(r.backbone, r.recipe, r.variant)}: {r.folds_done}/{r.folds_planned}"
            for r in missing.itertuples()))
    if _smoke(sweep):
        lines.append("SMOKE RUN (python -m sweeper.run --smoke): the grid shrunk to minutes on phantom data; its "
                     "numbers test the pipeline, not the recipes")
    lines.append(split_text(sweep) + "; numbers compare only between sweeps of the same split and folds")
    lines += _weights_lines(data.cells)
    lines.append("Numbers: mean +/- sd over outer folds of the trial best on inner validation. 'Pooled': on all "
                 "of a cell's out-of-fold test predictions at once, with a 95% CI from a patient-clustered "
                 f"bootstrap ({analysis.n_boot} resamples); p-values: paired bootstrap on the same test images, and "
                 "DeLong's test clustered by patient. Holm-adjusted only where a column says so: over the k-1 "
                 "comparisons of one ranking with its first row (a source or combination table per backbone; the "
                 "backbone table once per recipe); the conclusion, transfer-effect and loss-comparison p-values "
                 "are unadjusted. p below 0.001 is shown as <0.001.")
    return lines


SPLITS = {"random": "random (patient-grouped folds of the whole target)", "holdout": "holdout (one fixed "
          "patient-grouped train/val/test split)", "official": "official (the source's own test set)"}


def _smoke(sweep: dict) -> bool:
    """Whether the spec as it ran says smoke = true (sweeper.run --smoke)."""
    try:
        return bool(tomllib.loads(str(sweep.get("spec_text") or "")).get("smoke"))
    except tomllib.TOMLDecodeError:
        return False


def split_text(sweep: dict) -> str:
    """Which split the sweep's test numbers come from, and the hash of the folds file that defines it."""
    split, digest = sweep.get("split"), sweep.get("folds_sha256")
    if not isinstance(split, str):
        return "Split: not recorded (a sweep from before schema version 6)"
    return f"Split: {SPLITS.get(split, split)}, folds.csv SHA-256 {digest}"


def _weights_lines(cells) -> list[str]:
    """Which ImageNet weights file each backbone's cells started from, with its SHA-256."""
    used = cells.dropna(subset=["weights_file"]).drop_duplicates(["backbone", "weights_file", "weights_sha256"])
    return [f"ImageNet weights of {r.backbone}: {r.weights_file} (SHA-256 {r.weights_sha256})"
            for r in used.sort_values("backbone").itertuples()]


def build(url: str, sweep: str | None = None, n_boot: int = 1000, figures: bool = True, log=None,
          rules=RULES, calibrate: bool = False,
          subgroup_min: tuple[int, int] = (MIN_POSITIVES, MIN_NEGATIVES)) -> Report:
    started = time.perf_counter()
    data = load(url, sweep)
    analysis = Analysis(data, n_boot=n_boot)
    options = Options(tuple(rules), calibrate, tuple(subgroup_min))
    split = split_text(data.sweep)  # every table says which split its numbers come from
    sections = [(s.heading, [replace(t, note=f"{t.note} {split}.".strip()) for t in s.tables(analysis, options)], [])
                for s in SECTIONS]
    if figures:
        from results.figures import all_figures  # matplotlib only when figures are drawn

        by_heading = dict(all_figures(analysis))
        sections = [(h, t, by_heading.pop(h, []) if h in FIGURE_SECTIONS else []) for h, t, _ in sections]
        sections += [(h, [], f) for h, f in by_heading.items()]
    if log:
        log(f"[report] {data.name}: {len(analysis.cells)} cells in {time.perf_counter() - started:.1f} s")
    return Report(f"Sweep {data.name}: comparison report", _summary(data, analysis), sections)


def write_report(url: str, sweep: str, out: Path, n_boot: int = 1000,
                 extra_sections: list[tuple[str, list, list]] = ()) -> tuple[str, dict[str, Path]]:
    """Write the whole report under `out`; (the comparison's Markdown without figure links, the files
    written). The sweep driver calls this at its end, with the sections of its data-set summaries
    (`extra_sections`: heading, Tables, Figures), which go into the files only."""
    built = build(url, sweep, n_boot=n_boot)
    markdown = to_markdown(built, figure_dir=None)
    built.sections += list(extra_sections)
    return markdown, write(built, out)


def add_arguments(parser: cli.Parser) -> None:
    cli.add_db(parser)
    cli.add_sweep(parser)
    cli.add_out(parser, "folder to write report.md, report.html, tables/ and figures/ to (default: print only)")
    cli.add_bootstrap(parser)
    cli.add_threshold(parser, check_rule, repeat=True,
                      help=f"a threshold rule for the operating-point tables, fitted on inner validation: prevalence, "
                           f"youden or sensitivity:S; repeat for several (default: {', '.join(RULES)})")
    parser.rename("--operating-point", "--threshold")
    parser.add_argument("--subgroup-min", type=cli.at_least(1), nargs=2, default=(MIN_POSITIVES, MIN_NEGATIVES),
                        metavar=("POSITIVES", "NEGATIVES"),
                        help=f"a class counts in a subgroup only with this many positive and negative images there; "
                             f"a grouping's groups are compared on the classes that count in each group that has any "
                             f"(default {MIN_POSITIVES} {MIN_NEGATIVES})")
    parser.add_argument("--calibrate", action="store_true",
                        help="add temperature-scaled probabilities (T fitted per fold on inner validation) beside "
                             "the raw ones in the calibration tables")


def run(args) -> int:
    built = build(args.db, args.sweep, n_boot=args.bootstrap, figures=args.out is not None,
                  log=lambda line: print(line, file=sys.stderr), rules=args.thresholds or RULES,
                  calibrate=args.calibrate, subgroup_min=tuple(args.subgroup_min))
    print(to_markdown(built, figure_dir="figures" if args.out else None))
    if args.out:
        written = write(built, args.out)
        print(f"[report] wrote {written['markdown']}, {written['html']}, {args.out / 'tables'}, "
              f"{args.out / 'figures'}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(COMMAND, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
