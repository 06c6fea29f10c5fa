"""The sweep's data sets in its report: each prepared data set's summary (data_prep.summary) as
report sections of tables and figures (results.report renders them with the comparison)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from data_prep.summary import summarise
from results.figures import Figure
from results.tables import Table

FIGURE_TITLES = {"label_distribution": "label counts at each step (as read, merged, filtered, undersampled, built)",
                 "cooccurrence": "label co-occurrence", "sizes_and_views": "images' own sizes, and views"}


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    return out


def data_sections(data: dict[str, Path]) -> list[tuple[str, list[Table], list[Figure]]]:
    """One section per data set the sweep used (target first, then the sources)."""
    sections = []
    for name, root in data.items():
        s = summarise(root)
        overview = pd.DataFrame({"": list(s.overview), "value": [str(v) for v in s.overview.values()]})
        steps = s.steps.T.reset_index().rename(columns={"index": "label"})
        split = s.folds.columns[0]
        frames = [("overview", "overview", overview), ("labels", "labels as built", s.labels),
                  ("steps", "label counts at each step", steps),
                  ("cooccurrence", "label co-occurrence (images positive for both)",
                   s.cooccurrence.reset_index().rename(columns={"index": "label"})),
                  ("folds", f"prevalence per {split}", s.folds), ("rejected", "rejected files by reason", s.rejected),
                  ("views", "views", s.views)]
        tables = [Table(f"data_{name}_{key}", f"{name}: {title}", frame, _shown(frame))
                  for key, title, frame in frames if not frame.empty]
        figures = [Figure(f"data_{name}_{stem}", f"{name}: {FIGURE_TITLES.get(stem, stem)}", png)
                   for stem, png in s.figures.items()]
        sections.append((f"Data set {name} ({s.overview['data set']})", tables, figures))
    return sections
