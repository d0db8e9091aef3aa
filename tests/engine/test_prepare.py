"""The study preparation with an ensemble teacher (``teacher.ensemble``), on a tiny random
BERT saved as a model folder and the rating study's real reviews at tiny sizes.

Oracles come from the members themselves: each member's weights are read back from the
teacher cache with plain ``transformers`` and run one review at a time, so the mean the
students must distil from is computed without the engine's code."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.config import load_study
from engine.models import embedded_model_path

pytestmark = pytest.mark.slow  # two preparations through Ray (data, 3 teachers, importance): ~2 min

MEMBERS = 3
TINY = [
    "data.max_length=32",
    "data.train_size=48",
    "data.valid_size=24",
    "data.test_size=24",
    "teacher.epochs=1",
    "teacher.max_steps=3",
    "teacher.lr=1.0e-3",
    "importance.num_batches=1",
    "importance.batch_size=16",
    "importance.cpus_per_actor=0.5",
]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32, no dropout: a training forward equals an eval one; wide
    initial weights, so members' fresh heads differ visibly) with the embedded teacher's
    tokenizer, saved as a user's model folder would be."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.5,  # heads drawn under different seeds predict far apart
    )
    BertModel(cfg).save_pretrained(folder)
    src = embedded_model_path()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def prepared(ray_local, model_folder, tmp_path_factory):
    """``prepare`` of the rating study with a 3-member ensemble, then with none, sharing one
    teacher cache; the cache folder; and the study config."""
    from engine.prepare import prepare

    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("COMPRESSION_SWEEPS_CACHE", str(cache))
    try:
        base = ["teacher.model=" + str(model_folder), *TINY]
        cfg = load_study("rating", [*base, f"teacher.ensemble={MEMBERS}"])
        found: dict[str, dict] = {"ensemble": {}, "single": {}}
        ens = prepare(cfg, {}, found["ensemble"])
        members = sorted(p.name for p in (cache / "teachers").iterdir())
        single = prepare(
            load_study("rating", [*base, "teacher.ensemble=null"]), {}, found["single"]
        )
    finally:
        mp.undo()
    return {
        "ensemble": ens,
        "single": single,
        "cache": cache,
        "members": members,
        "cfg": cfg,
        "found": found,
    }


def _member(cache: Path, key: str) -> torch.nn.Module:
    """A cached member rebuilt with plain transformers from its files."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    d = cache / "teachers" / key
    config = json.loads((d / "meta.json").read_text())["config"]
    model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(**config))
    model.load_state_dict(load_file(d / "state_dict.safetensors"))
    return model.eval()


def _one_by_one(model: torch.nn.Module, split: dict[str, np.ndarray]) -> np.ndarray:
    """The model's predicted rating of each review, one forward per review."""
    out = []
    with torch.no_grad():
        for ids, mask in zip(split["input_ids"], split["attention_mask"], strict=True):
            z = model(
                input_ids=torch.as_tensor(ids[None]), attention_mask=torch.as_tensor(mask[None])
            )
            out.append(float(z.logits[0, 0]))
    return np.asarray(out)


@pytest.fixture(scope="module")
def member_predictions(prepared) -> dict[str, dict[str, np.ndarray]]:
    """cache key → split → that member's predictions, one review at a time."""
    data = prepared["ensemble"][0]
    splits = {"train": data.train, "valid": data.valid, "test": data.test}
    return {
        key: {name: _one_by_one(_member(prepared["cache"], key), s) for name, s in splits.items()}
        for key in prepared["members"]
    }


def test_each_member_is_cached_apart_and_the_members_differ(prepared, member_predictions):
    assert len(prepared["members"]) == MEMBERS
    states = [
        load_file(prepared["cache"] / "teachers" / k / "state_dict.safetensors")
        for k in prepared["members"]
    ]
    for i in range(MEMBERS):
        for j in range(i + 1, MEMBERS):
            assert any(not torch.equal(states[i][n], states[j][n]) for n in states[i])
            a = member_predictions[prepared["members"][i]]["train"]
            b = member_predictions[prepared["members"][j]]["train"]
            assert np.abs(a - b).mean() > 1e-2  # different seeds, different teachers


def test_students_distil_from_the_members_mean_and_start_from_member_0(
    prepared, member_predictions
):
    _, art, shared = prepared["ensemble"]
    mean = np.mean([p["train"] for p in member_predictions.values()], axis=0)
    torch.testing.assert_close(
        torch.as_tensor(shared.teacher_train_logits[:, 0]),
        torch.as_tensor(mean, dtype=torch.float32),
        rtol=1e-4,
        atol=1e-5,
    )
    # the students start from one member (the teacher row's model), the one seeded teacher.seed
    own = np.asarray(art.train_logits[:, 0], np.float64)
    hits = [k for k, p in member_predictions.items() if np.allclose(p["train"], own, atol=1e-5)]
    assert hits == [art.key]
    assert {m["seed"] for m in art.ensemble.summary()["members"]} == {0, 1, 2}
    first = art.ensemble.members[0]
    assert (first["seed"], first["cache_key"]) == (0, art.key)
    member = _member(prepared["cache"], art.key)
    for name, tensor in member.state_dict().items():
        torch.testing.assert_close(shared.teacher_state[name], tensor, rtol=0, atol=0)


def test_without_an_ensemble_the_same_teacher_is_reused_from_the_cache(
    prepared, member_predictions
):
    _, art_e, _ = prepared["ensemble"]
    _, art, shared = prepared["single"]
    assert art.key == art_e.key and art.cached and art.ensemble is None
    assert len(list((prepared["cache"] / "teachers").iterdir())) == MEMBERS  # nothing new
    torch.testing.assert_close(
        torch.as_tensor(shared.teacher_train_logits[:, 0]),
        torch.as_tensor(member_predictions[art.key]["train"], dtype=torch.float32),
        rtol=1e-4,
        atol=1e-5,
    )


def test_the_ensemble_is_scored_on_the_members_mean_prediction(prepared, member_predictions):
    data, art, _ = prepared["ensemble"]
    for split, prefix in ((data.test, ""), (data.valid, "valid_")):
        name = "test" if prefix == "" else "valid"
        mean = np.mean([p[name] for p in member_predictions.values()], axis=0)
        y = split["labels"].astype(np.float64)
        rmse = math.sqrt(sum((m - t) ** 2 for m, t in zip(mean, y, strict=True)) / len(y))
        mae = sum(abs(m - t) for m, t in zip(mean, y, strict=True)) / len(y)
        assert art.ensemble.metrics[f"{prefix}rmse"] == pytest.approx(rmse, rel=1e-4)
        assert art.ensemble.metrics[f"{prefix}mae"] == pytest.approx(mae, rel=1e-4)
    # the ensemble's mean is not one member's: its RMSE differs from each member's own
    own = [m["metrics"]["test_rmse"] for m in art.ensemble.members]
    assert all(abs(o - art.ensemble.metrics["rmse"]) > 1e-6 for o in own)


@pytest.mark.parametrize("stage", ["distill", "prune"])
def test_a_students_kd_target_is_the_ensemble_mean(prepared, member_predictions, stage):
    """Planted: a student that is member 0 (nothing pruned, no dropout), trained one step on
    the distillation term alone with every review in one batch, has that step's loss =
    mean over reviews of (member 0's prediction − the members' mean)², computed before the
    step changes anything; the same loss against member 0's own outputs would be 0."""
    from engine.config import with_values
    from engine.trial import build_student

    data, art, shared = prepared["ensemble"]
    n = len(data.train["labels"])
    kd = {"kd": True, "alpha_distill": 1.0, "alpha_task": 0.0, "batch_size": n}
    if stage == "distill":
        values = {"pipeline.order": ["distill"], "pipeline.distill": {**kd, "max_steps": 1}}
    else:
        values = {
            "pipeline.order": ["prune"],
            "pipeline.prune": {
                **kd, "method": "structured", "criterion": "magnitude", "head_sparsity": 0.0, "neuron_sparsity": 0.0,
                "steps": 0, "recovery_steps": 1,
            },
        }  # fmt: skip
    study = with_values(prepared["cfg"], values)
    _, record = build_student(study, shared, seed=0, device=torch.device("cpu"))
    loss = record["distill"]["final_loss"] if stage == "distill" else None
    if stage == "prune":
        assert record["prune"]["ffn_width"] == record["prune"]["ffn_width_before"]
        loss = record["prune"]["recovery"]["final_loss"]
    own = member_predictions[art.key]["train"]
    mean = np.mean([p["train"] for p in member_predictions.values()], axis=0)
    expected = sum((a - b) ** 2 for a, b in zip(own, mean, strict=True)) / n
    assert expected > 1e-3  # the planted gap is visible
    assert loss == pytest.approx(expected, rel=1e-3)


def test_the_second_preparation_finds_the_data_and_the_importance_cached(prepared):
    """The single-teacher study shares the ensemble study's data and member 0 (the teacher it
    would train): its splits and importance scores come from the cache, equal to the ones
    the first preparation computed."""
    from engine.importance.runner import importance_table

    first, second = prepared["found"]["ensemble"], prepared["found"]["single"]
    assert first["dir"] == second["dir"] == str(prepared["cache"])
    assert not first["data"]["cached"] and not first["importance"]["cached"]
    assert second["data"] == {"key": first["data"]["key"], "cached": True}
    assert second["importance"] == {"key": first["importance"]["key"], "cached": True}
    # one entry each: member 0's importance (the other members' ranks are cached apart)
    assert len(list((prepared["cache"] / "data").iterdir())) == 1
    assert len(list((prepared["cache"] / "importance").iterdir())) == MEMBERS
    (d1, _, s1), (d2, _, s2) = prepared["ensemble"], prepared["single"]
    for split in ("train", "valid", "test"):
        a, b = getattr(d1, split), getattr(d2, split)
        assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a), split
    assert list(s1.importance) == list(s2.importance)
    t1, t2 = importance_table(s1.importance), importance_table(s2.importance)
    assert t1.equals(t2)
