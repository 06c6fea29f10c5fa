"""What every source kind's options share: a strict, frozen, typed model whose fields are the options
the CLI, the spec and the builder all use (one definition, one default), and whose dump is what the
prepared data set's content address sees."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Policy = Literal["u_ignore", "u_zeros", "u_ones", "u_mixed"]  # what CheXpert's uncertain (-1) labels become
Blank = Literal["negative", "mask"]  # what an unmentioned (blank) label becomes


class Options(BaseModel):
    """One source kind's options; `kind` names it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def hashed(self) -> dict:
        return self.model_dump(mode="json")
