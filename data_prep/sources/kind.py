"""What a source kind declares, once, in its own module: `KIND = SourceKind(...)`.

Everything else that depends on the kind (the build's and the labels command's arguments and help, a
spec's `KIND:FOLDER` locations and `[data.prepare.NAME]` options, how data_prep.locate finds its images
and what it says when they are missing, which kinds have an official split) reads this record through
the registry in data_prep.sources, so adding a kind is adding one module (docs/design.md §5).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from data_prep.labelset import LabelSet
from data_prep.sources.options import Options

NAME = re.compile(r"[a-z][a-z0-9_]*")  # a CLI choice, a `KIND:FOLDER` scheme, a prepared set's name prefix
RESERVED = ("phantom",)  # a spec location scheme of its own (sweeper.spec.PHANTOM)


@dataclass(frozen=True)
class SourceKind:
    """One source kind: its options, its reader and what the rest of the project says about it."""

    name: str
    title: str  # what it is, for the kind argument's help: "NIH ChestX-ray14 (PNG)"
    options: type[Options]  # its options model; its `kind` field's default is `name`
    label_table: Callable[[Path, Options], Path]  # the table meant by what the user gave (a file or a folder)
    read_labels: Callable[[Path, Options], LabelSet]  # that table's rows as a LabelSet
    table_help: str  # what --labels takes for this kind
    key_parts: int  # trailing path parts that find an image in any published layout; 0: the paths as listed
    likely_cause: str  # why its listed images are most often not found
    official_split: Callable[[Path, Options], tuple[LabelSet, list[str]]] | None = None  # its own test set
    official_help: str = ""  # that test set's file, for --split's help
    public_paths: bool = False  # its file names may appear in messages; a hospital's never do (design.md §3.5)

    def __post_init__(self):
        """A malformed declaration is the contributor's bug: it stops the import that registers it."""
        if not NAME.fullmatch(self.name) or self.name in RESERVED:
            raise ValueError(f"source kind {self.name!r}: expected a lower-case identifier other than {RESERVED}")
        kind = self.options.model_fields.get("kind")
        if kind is None or kind.default != self.name:
            raise ValueError(f"source kind {self.name!r}: its options model {self.options.__name__} needs "
                             f"kind: Literal[{self.name!r}] = {self.name!r}")
        if self.key_parts < 0:
            raise ValueError(f"source kind {self.name!r}: key_parts={self.key_parts}; expected 0 or more")
        if (self.official_split is None) != (not self.official_help):
            raise ValueError(f"source kind {self.name!r}: official_split and official_help go together")
