"""Name → callable registries with helpful errors.

Every extension point (corpora, importance methods, compression stages) keeps one
:class:`Registry`. A duplicate name is an error; an unknown name raises
:class:`UnknownNameError`, which lists the known names and the nearest match.

Example::

    STAGES = Registry("compression stage")

    @STAGES.register("truncate")
    def apply(model, cfg, ctx): ...

    STAGES.get("truncate")
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry", "UnknownNameError"]

T = TypeVar("T", bound=Callable)


class UnknownNameError(KeyError, ValueError):
    """Raised for a name that is not registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    """A named collection of callables, filled by a decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(fn: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            return fn

        return deco

    def unregister(self, name: str) -> T:
        """Remove and return ``name`` (for tests and notebooks that register a throwaway
        entry); an unknown name raises :class:`UnknownNameError`."""
        entry = self.get(name)
        del self._items[name]
        return entry

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        known = sorted(self._items)
        near = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return f"unknown {self.kind} {name!r}{hint} (known: {', '.join(known)})"

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
