"""The ensemble's pieces on planted outputs: members' seeds, the mean of their outputs, and the
task's quality of that mean. (The members trained, cached and distilled from in a study's
preparation: tests/engine/test_prepare.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from engine.ensemble import build_ensemble, mean_outputs, member_configs
from engine.teacher import TeacherArtifacts, TeacherConfig


def _member(key: str, train_logits: np.ndarray) -> TeacherArtifacts:
    return TeacherArtifacts({}, {}, train_logits, {"test_rmse": 0.0}, key)


def test_members_are_the_recipe_under_consecutive_seeds() -> None:
    cfg = TeacherConfig(seed=7, ensemble=3, lr=3e-4, max_steps=5)
    members = member_configs(cfg)
    assert [m.seed for m in members] == [7, 8, 9]
    for m in members:  # only the seed differs
        assert m.model_dump(exclude={"seed"}) == cfg.model_dump(exclude={"seed"})
    assert member_configs(TeacherConfig(seed=7)) == [TeacherConfig(seed=7)]


def test_the_mean_of_outputs_is_taken_example_by_example() -> None:
    rng = np.random.default_rng(0)
    outs = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(4)]
    got = mean_outputs(outs)
    assert got.dtype == np.float32 and got.shape == (5, 3)
    for i in range(5):
        for c in range(3):
            assert got[i, c] == pytest.approx(sum(float(o[i, c]) for o in outs) / 4, abs=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        mean_outputs([outs[0], outs[1][:4]])


def test_a_regression_ensemble_is_scored_on_its_mean_prediction() -> None:
    """Planted: three members predicting y + 1, y − 1 and y + 0.3 on test. Each misses by
    at least 0.3; their mean misses every rating by exactly 0.1."""
    y = np.array([5.0, 4.0, 1.0, 3.0], np.float32)
    valid_y = np.array([2.0, 5.0], np.float32)
    splits = {"test": {"labels": y}, "valid": {"labels": valid_y}}
    offsets = (1.0, -1.0, 0.3)
    evals = [{"test": (y + d)[:, None], "valid": (valid_y + 2 * d)[:, None]} for d in offsets]
    train = [np.full((6, 1), d, np.float32) for d in offsets]
    ens = build_ensemble(
        [_member(f"k{i}", t) for i, t in enumerate(train)],
        [0, 1, 2],
        evals,
        splits,
        "rating_regression",
    )
    assert ens.metrics["rmse"] == pytest.approx(0.1, rel=1e-5)
    assert ens.metrics["mae"] == pytest.approx(0.1, rel=1e-5)
    assert ens.metrics["valid_rmse"] == pytest.approx(0.2, rel=1e-5)
    np.testing.assert_allclose(ens.train_logits, np.full((6, 1), 0.1), rtol=1e-5)
    summary = ens.summary()
    assert summary["size"] == 3
    assert [(m["seed"], m["cache_key"]) for m in summary["members"]] == [
        (0, "k0"),
        (1, "k1"),
        (2, "k2"),
    ]


def test_a_classification_ensemble_averages_logits_before_the_argmax() -> None:
    """Two members that each get one of two reviews wrong, confidently in different places:
    the mean of their logits is right on both (accuracy 1 where each member scores 0.5)."""
    labels = np.array([0, 1], np.int64)
    a = np.array([[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)  # second wrong (class 2)
    b = np.array([[0.0, 0.0, 1.0], [0.0, 3.0, 0.0]], np.float32)  # first wrong (class 2)
    splits = {"test": {"labels": labels}}
    ens = build_ensemble(
        [_member("a", a), _member("b", b)], [0, 1], [{"test": a}, {"test": b}], splits,
        "rating_classification",
    )  # fmt: skip
    assert ens.metrics["accuracy"] == 1.0


def test_an_ensemble_needs_two_members_with_outputs_each() -> None:
    one = _member("a", np.zeros((2, 1), np.float32))
    with pytest.raises(ValueError, match="2 members"):
        build_ensemble([one], [0], [{"test": np.zeros((2, 1))}], {}, "rating_regression")
    with pytest.raises(ValueError, match="2 members"):
        build_ensemble([one, one], [0, 1], [{"test": np.zeros((2, 1))}], {}, "rating_regression")
