"""Which label table a user meant by `--labels`: the file named, or a downloaded folder's one obvious table.

Each source module declares its obvious table (its `TABLES`: tiers of glob patterns, the first tier with
a match wins) and resolves what the user gave through `one_table`, so `data_prep.build`,
`data_prep.labels` and a sweep's `KIND:FOLDER` all read the same file from the same download, and the
prepared set's content address (data_prep.build.input_hashes) sees that file whichever way it was named.
"""
from __future__ import annotations

from pathlib import Path

from data_prep.errors import DataPrepError


def one_table(folder: Path, tiers: tuple[tuple[str, ...], ...], what: str) -> Path:
    """The one file in `folder` that the first tier of patterns with any match finds; DataPrepError naming
    the tables expected when none is there, and listing them when a tier finds several (which one is meant
    is the user's choice, never a guess)."""
    for patterns in tiers:
        found = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(str(p.relative_to(folder)) for p in found)
            raise DataPrepError(f"{folder}: {len(found)} {what} label tables ({names}); give the one to build "
                                f"from as the label table")
    expected = " or ".join(pattern for patterns in tiers for pattern in patterns)
    raise DataPrepError(f"{folder}: no {what} label table in this folder; expected {expected}, or give the table "
                        f"itself")
