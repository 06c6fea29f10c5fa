"""Live views of a registry: a list of names read whenever it is used, so that a name registered after the view was
imported (a plug-in's metric or backbone, a test's toy) is in it wherever the view was imported."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence


class Names(Sequence):
    """A registry's names (those `names()` yields now): `in`, iteration, `len`, indexing and `==` with a tuple
    behave as on the tuple `now()`."""

    def __init__(self, names: Callable[[], Iterable[str]]):
        self._names = names

    def now(self) -> tuple[str, ...]:
        return tuple(self._names())

    def __getitem__(self, index):
        return self.now()[index]

    def __len__(self) -> int:
        return len(self.now())

    def __iter__(self) -> Iterator[str]:
        return iter(self.now())

    def __contains__(self, name) -> bool:
        return name in self.now()

    def __eq__(self, other) -> bool:
        return self.now() == (other.now() if isinstance(other, Names) else other)

    __hash__ = None  # changes with the registry

    def __repr__(self) -> str:
        return repr(self.now())
