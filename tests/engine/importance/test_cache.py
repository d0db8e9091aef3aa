"""The importance cache: a hit gives back every method's scores exactly as computed (scores,
intervals, per-batch and per-example rows, counts), the key follows the teacher, the
calibration data, every importance setting and the task, and a damaged entry is a miss.

The oracle is the scoring itself: every registered method run on a tiny random BERT."""

from __future__ import annotations

import math
from dataclasses import astuple, fields

import numpy as np
import pytest

import engine.importance  # noqa: F401  (registers every method)
from engine.importance import IMPORTANCE
from engine.importance.base import DERIVED, LayerScores, bootstrap_ci
from engine.importance.cache import importance_key, load_scores, save_scores
from engine.importance.compute import score_methods
from engine.importance.config import ImportanceConfig
from tests.conftest import tiny_bert, toy_arrays, toy_batches


def _same(a: LayerScores, b: LayerScores) -> bool:
    """Field by field, types included (tuples stay tuples), NaN equal to NaN."""

    def flat(value):
        if isinstance(value, tuple):
            return tuple(flat(v) for v in value)
        if isinstance(value, float) and math.isnan(value):
            return "nan"
        return (type(value).__name__ if not isinstance(value, float) else "float", value)

    return all(flat(getattr(a, f.name)) == flat(getattr(b, f.name)) for f in fields(LayerScores))


def test_a_hit_gives_back_every_methods_scores_exactly(tmp_path) -> None:
    methods = [*IMPORTANCE.names(), *DERIVED]
    cfg = ImportanceConfig(methods=tuple(methods), mc_samples=2, conductance_steps=2)
    raw = score_methods(tiny_bert(num_layers=3), toy_batches(2, batch_size=4), methods, cfg)
    # with bootstrap intervals, as the importance runner hands them on
    scores = {m: bootstrap_ci(s, samples=50, min_examples=2, min_batches=2) for m, s in raw.items()}
    assert set(scores) == set(methods)
    assert any(s.per_example is not None for s in scores.values())  # rows of rows round-trip
    assert any(s.ci_low is not None for s in scores.values())
    assert load_scores("k", tmp_path) is None
    save_scores("k", scores, tmp_path)
    hit = load_scores("k", tmp_path)
    assert hit is not None and list(hit) == list(scores)  # every method, in the same order
    for name, made in scores.items():
        assert _same(hit[name], made), name
        assert hit[name].ranks() == made.ranks()
    # the scores are real numbers, not all alike: a lossy round trip would show
    assert len({astuple(s)[1] for s in scores.values()}) > 1


def test_the_key_follows_teacher_data_settings_and_task() -> None:
    train = toy_arrays(0)
    cfg = ImportanceConfig()
    key = importance_key("teacher-a", train, cfg, "rating_classification")
    assert key == importance_key("teacher-a", toy_arrays(0), cfg, "rating_classification")
    other_rows = {k: v.copy() for k, v in train.items()}
    other_rows["labels"][0] = (other_rows["labels"][0] + 1) % 5
    changed = [
        importance_key("teacher-b", train, cfg, "rating_classification"),
        importance_key("teacher-a", other_rows, cfg, "rating_classification"),
        importance_key("teacher-a", train, cfg, "rating_regression"),
        *(
            importance_key(
                "teacher-a", train, cfg.model_copy(update={f: v}), "rating_classification"
            )
            for f, v in [
                ("num_batches", 3),
                ("methods", ("fisher",)),
                ("seed", 1),
                ("ablation_metric", "kl"),
                ("autocast_bf16", False),
                ("gpus_per_actor", 0.5),
            ]
        ),
    ]
    assert key not in changed and len(set(changed)) == len(changed)


def test_a_damaged_entry_is_a_miss(tmp_path) -> None:
    scores = {"fisher": LayerScores("fisher", (0.5, float(np.float64(0.25))), 4)}
    d = save_scores("k", scores, tmp_path)
    assert _same(load_scores("k", tmp_path)["fisher"], scores["fisher"])
    (d / "meta.json").write_text((d / "meta.json").read_text()[:-10])  # cut short
    assert load_scores("k", tmp_path) is None
    (d / "meta.json").write_text('{"methods": [{"method": "fisher", "no_such_field": 1}]}')
    assert load_scores("k", tmp_path) is None


@pytest.mark.parametrize("bad", [{"methods": "x"}, {}, []])
def test_an_entry_of_the_wrong_shape_is_a_miss(tmp_path, bad) -> None:
    import json

    (tmp_path / "importance" / "k").mkdir(parents=True)
    (tmp_path / "importance" / "k" / "meta.json").write_text(json.dumps(bad))
    assert load_scores("k", tmp_path) is None
