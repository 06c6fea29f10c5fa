"""`cxr-sweep summary DIR [--out OUT]` (or `python -m data_prep.summary`): what a prepared data set holds, as
Markdown and PNG.

Label counts at every step of the label reader (as read, merged, filtered, undersampled: seed
003's distributions before and after undersampling) and as built, label co-occurrence,
prevalence per outer fold (or holdout split), rejected files by reason, and the images' own
sizes and views. Read from the data set's own files only; keys are pseudonymous and no path is
written, so a summary is as shareable as the data set's manifest.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on a cluster head or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from data_prep.dataset import PreparedDataset  # noqa: E402
from data_prep.table_layout import SOURCE_SIZE, TEXT  # noqa: E402
from vocab import cli  # noqa: E402

COMMAND = cli.Command(
    name="summary", module="data_prep.summary",
    summary="Summarise a prepared data set: label counts, folds, rejected files, sizes and views.",
    description="Label counts at every step of the label reader and as built, label co-occurrence, prevalence per "
                "outer fold, rejected files by reason and the images' own sizes and views, as summary.md and figures/. "
                "Keys are pseudonymous and no path is written, so a summary is as shareable as the data set's manifest.",
    examples=("/data/prepared/target-1a2b", "/data/prepared/nih-3c4d --out nih-summary/"))
TOP_SIZES = 10  # most common image sizes listed


@dataclass
class DataSummary:
    name: str
    overview: dict
    steps: pd.DataFrame  # one row per step of the label reader, then "built": images and positives per label
    labels: pd.DataFrame  # label, positives, negatives, unknown, prevalence (as built)
    cooccurrence: pd.DataFrame  # labels x labels: images positive for both (the diagonal: positives)
    folds: pd.DataFrame  # fold or split: images, patients, prevalence per label
    rejected: pd.DataFrame  # reason, files
    sizes: pd.DataFrame  # height, width, images (the images' own size before resizing)
    views: pd.DataFrame  # view, images
    figures: dict[str, bytes] = field(default_factory=dict)  # file stem -> PNG


def summarise(root: Path | str, figures: bool = True) -> DataSummary:
    data = PreparedDataset(root)
    manifest, names = data.manifest, data.label_names
    table = pd.read_csv(data.root / "labels.csv", dtype={c: str for c in TEXT},
                        keep_default_na=False, na_values={n: [""] for n in names})
    labels = pd.DataFrame(data.labels, columns=names)
    positives = labels.sum().astype(int)
    known = labels.notna().sum()
    label_table = pd.DataFrame({"label": names, "positives": positives.to_numpy(),
                                "negatives": (known - positives).to_numpy(), "unknown": labels.isna().sum().to_numpy(),
                                "prevalence": (positives / known.replace(0, np.nan)).to_numpy()})
    known_positive = labels.fillna(0).to_numpy()
    summary = DataSummary(
        name=manifest.get("name", data.root.name), overview=_overview(data, table), steps=_steps(manifest, positives),
        labels=label_table,
        cooccurrence=pd.DataFrame((known_positive.T @ known_positive).astype(int), index=names, columns=names),
        folds=_folds(data, labels), rejected=_rejected(data.root), sizes=_sizes(table),
        views=table["view"].replace("", "unknown").value_counts().rename_axis("view").reset_index(name="images"))
    if figures:
        summary.figures = _figures(summary)
    return summary


def _overview(data: PreparedDataset, table: pd.DataFrame) -> dict:
    m = data.manifest
    counts, params = m["counts"], m["params"]
    clipped = (f"{counts['lossy_clipped_films']} ({counts['lossy_clipped_pixels']} pixels)"
               if "lossy_clipped_films" in counts else "not counted (built before the count)")
    return {"data set": data.root.name, "kind": params["source"]["kind"],
            "images": len(table), "patients": int(table["patient_key"].nunique()), "labels": len(data.label_names),
            "size": f"{m['size']} px, {params['bits']}-bit",
            "split": _split_text(data, params),
            "rejected": counts["rejected"], "listed but not found (of the rejected)": counts["missing"],
            "duplicates removed": counts["duplicates"], "lossy films clipped to BitsStored": clipped}


def _split_text(data: PreparedDataset, params: dict) -> str:
    if data.split_name == "official":
        return "official: the source's own test set as the one fold's test part (" + \
            ", ".join(data.manifest.get("label_stats", {}).get("official_split", {})) + ")"
    if data.split_name == "holdout":
        return "holdout " + "/".join(str(round(100 * f)) for f in params["holdout"])
    return f"{data.num_folds} patient-grouped outer folds"


def _steps(manifest: dict, built: pd.Series) -> pd.DataFrame:
    """The label reader's steps from the manifest, then the data set as built (after rejected files and
    duplicates)."""
    rows = [{"step": s["step"], "images": s["images"], **s["positives"]} for s in manifest["label_stats"]["steps"]]
    rows.append({"step": "built (rejected files and duplicates removed)",
                 "images": int(manifest["counts"]["images"]), **built.to_dict()})
    return pd.DataFrame(rows).set_index("step")


def _folds(data: PreparedDataset, labels: pd.DataFrame) -> pd.DataFrame:
    parts = data.holdout if data.is_holdout else data.folds
    column = "split" if data.is_holdout else "fold"
    frame = labels.assign(**{column: parts, "patient": data.patient_keys})
    grouped = frame.groupby(column)
    out = pd.DataFrame({"images": grouped.size(), "patients": grouped["patient"].nunique()})
    return out.join(grouped[list(labels.columns)].mean()).reset_index()


def _rejected(root: Path) -> pd.DataFrame:
    """Rejected files grouped by the kind of reason (its text before any detail in brackets)."""
    path = root / "rejected.csv"
    rejected = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["reason"])
    if rejected.empty:
        return pd.DataFrame({"reason": pd.Series(dtype=str), "files": pd.Series(dtype=int)})
    kinds = rejected["reason"].astype(str).map(lambda r: re.split(r" \(|: |; ", r, maxsplit=1)[0].strip())
    return kinds.value_counts().rename_axis("reason").reset_index(name="files")


def _sizes(table: pd.DataFrame) -> pd.DataFrame:
    sizes = table[list(SOURCE_SIZE)].set_axis(["height", "width"], axis=1)
    return sizes.value_counts().rename("images").reset_index()


def _figures(s: DataSummary) -> dict[str, bytes]:
    from io import BytesIO

    def png(fig) -> bytes:
        buffer = BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return buffer.getvalue()

    out = {}
    steps = s.steps.drop(columns="images")
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(steps.columns) * max(1, len(steps)) ** 0.5 + 1.5))
    height = 0.8 / len(steps)
    for i, (step, row) in enumerate(steps.iterrows()):
        ax.barh(np.arange(len(row)) + i * height, row.fillna(0).to_numpy(), height, label=step)
    ax.set_yticks(np.arange(len(steps.columns)) + height * (len(steps) - 1) / 2, steps.columns, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("images with the label")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(f"{s.name}: label counts at each step")
    out["label_distribution"] = png(fig)

    fig, ax = plt.subplots(figsize=(0.45 * len(s.cooccurrence) + 2.5, 0.45 * len(s.cooccurrence) + 2))
    shown = ax.imshow(s.cooccurrence.to_numpy(), cmap="viridis")
    ax.set_xticks(range(len(s.cooccurrence)), s.cooccurrence.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(len(s.cooccurrence)), s.cooccurrence.index, fontsize=7)
    fig.colorbar(shown, ax=ax, label="images positive for both")
    ax.set_title(f"{s.name}: label co-occurrence")
    out["cooccurrence"] = png(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    left.scatter(s.sizes["width"], s.sizes["height"], s=8 + 40 * s.sizes["images"] / s.sizes["images"].max(),
                 alpha=0.6)
    left.set_xlabel("width (px)")
    left.set_ylabel("height (px)")
    left.set_title("images' own sizes")
    right.bar(s.views["view"], s.views["images"])
    right.set_title("views")
    out["sizes_and_views"] = png(fig)
    return out


def _table(frame: pd.DataFrame, floats: str = "{:.3f}") -> list[str]:
    text = frame.copy()
    for column in text.columns:
        if pd.api.types.is_float_dtype(text[column]):
            text[column] = text[column].map(lambda v: "" if pd.isna(v) else floats.format(v))
    escape = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(escape(c) for c in text.columns) + " |", "|" + "---|" * len(text.columns)]
    lines += ["| " + " | ".join(escape(v) for v in row) + " |" for row in text.itertuples(index=False)]
    return lines


def to_markdown(s: DataSummary, figure_dir: str | None = "figures") -> str:
    lines = [f"# Data set {s.name}", ""]
    lines += [f"- {key}: {value}" for key, value in s.overview.items()]
    lines += ["", "## Labels as built", "", *_table(s.labels)]
    lines += ["", "## Label counts at each step", "",
              *_table(s.steps.T.reset_index().rename(columns={"index": "label"}), "{:.0f}")]
    lines += ["", "## Label co-occurrence (images positive for both)", "",
              *_table(s.cooccurrence.reset_index().rename(columns={"index": "label"}))]
    lines += ["", "## Per " + s.folds.columns[0], "", *_table(s.folds)]
    lines += ["", "## Rejected files by reason", ""]
    lines += _table(s.rejected) if not s.rejected.empty else ["none"]
    lines += ["", "## Image sizes (before resizing) and views", ""]
    lines += _table(s.sizes.head(TOP_SIZES))
    lines += ["", *_table(s.views)]
    if figure_dir is not None:
        lines += [""] + [f"![{stem}]({figure_dir}/{stem}.png)" for stem in s.figures]
    return "\n".join(lines) + "\n"


def write_summary(root: Path | str, out: Path) -> tuple[DataSummary, str]:
    summary = summarise(root)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for stem, png in summary.figures.items():
        (out / "figures" / f"{stem}.png").write_bytes(png)
    markdown = to_markdown(summary)
    (out / "summary.md").write_text(markdown)
    return summary, markdown


def add_arguments(parser: cli.Parser) -> None:
    parser.add_argument("dataset", type=Path, metavar="DIR", help="a prepared data set (prepare's output)")
    cli.add_out(parser, "folder for summary.md and figures/ (default: ./summary-<data set>; the data set itself is "
                        "never written to)")


def run(args) -> int:
    out = args.out or Path(f"summary-{args.dataset.resolve().name}")
    _, markdown = write_summary(args.dataset, out)
    print(markdown)
    print(f"[data_prep] summary written to {out}/summary.md and {out}/figures/", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(COMMAND, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
