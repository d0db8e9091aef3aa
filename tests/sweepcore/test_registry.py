"""sweepcore/registry.py: duplicate and unknown names, removal."""

from __future__ import annotations

import pytest

from sweepcore.registry import Registry, UnknownNameError


def _fill() -> Registry:
    reg: Registry = Registry("widget")
    for name in ("alpha", "beta"):
        reg.register(name)(lambda name=name: name)
    return reg


def test_duplicate_and_unknown_names() -> None:
    reg = _fill()
    with pytest.raises(ValueError, match="widget 'alpha' is already registered"):
        reg.register("alpha")(lambda: None)
    with pytest.raises(UnknownNameError, match=r"did you mean 'alpha'\? \(known: alpha, beta\)"):
        reg.get("alpah")


def test_unregister_removes_the_entry_and_frees_the_name() -> None:
    reg = _fill()
    entry = reg.unregister("alpha")
    assert entry() == "alpha" and reg.names() == ["beta"] and "alpha" not in reg
    with pytest.raises(UnknownNameError, match=r"known: beta\)"):
        reg.unregister("alpha")
    reg.register("alpha")(lambda: "again")  # the name is free again
    assert reg.get("alpha")() == "again" and len(reg) == 2
