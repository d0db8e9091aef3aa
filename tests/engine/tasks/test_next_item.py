"""The ``next_item`` task: scoring, reference rows, importance quality, the teacher's
objective and the study checks.

Oracles: a per-user Python loop over candidate lists (ranks, sampled protocol, popularity),
hand-written targets and a per-position cross-entropy loop. The models: test_item_models.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.tasks import get_task

TASK = get_task("next_item")


def _loop_rank(scores: np.ndarray, target: int, candidates: set[int]) -> int:
    """Candidates scored at least as high as the target (pessimistic ties), by hand."""
    return sum(1 for c in candidates if c != target and scores[c] >= scores[target])


def _split(n: int, items: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    seen = np.zeros((n, 6), np.int64)
    for u in range(n):
        k = rng.integers(0, 6)
        seen[u, 6 - k :] = rng.choice(np.arange(1, items), k, replace=False)
    return {
        "labels": rng.integers(1, items, n).astype(np.int64),
        "seen": seen,
        "row_key": np.asarray([f"u{u}" for u in range(n)]),
    }


def test_full_ranking_excludes_padding_and_seen_items_by_a_per_user_loop() -> None:
    items = 15
    split = _split(40, items, 0)
    # integer scores in a small range: many ties, which the rule counts ahead of the target
    scores = np.random.default_rng(1).integers(0, 4, (40, items)).astype(np.float32)
    got = TASK.score(scores, split)
    ranks = []
    for u in range(40):
        seen = {int(s) for s in split["seen"][u] if s}
        target = int(split["labels"][u])
        candidates = (set(range(1, items)) - seen) | {target}
        ranks.append(_loop_rank(scores[u], target, candidates))
    r = np.asarray(ranks)
    assert got["ranking"] == "full"
    assert got["hr_at_10"] == pytest.approx(np.mean(r < 10))
    assert got["ndcg_at_5"] == pytest.approx(
        np.mean([1 / math.log2(x + 2) if x < 5 else 0 for x in r])
    )
    assert got["mrr"] == pytest.approx(np.mean(1 / (r + 1)))
    table = TASK.example_table(scores, split)
    assert table.column("rank").to_pylist() == ranks
    assert table.column("user_id").to_pylist() == list(split["row_key"])
    counts = [len((set(range(1, items)) - {int(s) for s in split["seen"][u] if s}) | {int(split["labels"][u])}) for u in range(40)]  # fmt: skip
    assert table.column("candidates").to_pylist() == counts


def test_sampled_protocol_ranks_the_target_among_its_negatives_only() -> None:
    scores = np.array([[0.0, 5.0, 1.0, 9.0, 2.0, 5.0], [0.0, 1.0, 1.0, 1.0, 0.5, 3.0]], np.float32)
    split = {"labels": np.array([1, 2]), "negatives": np.array([[2, 4, 5], [1, 4, 3]])}
    side = TASK.score(scores, split)  # full ranking, the sampled figures beside it
    got = TASK.score(scores, {**split, "protocol": np.array(["sampled", "sampled"])})
    assert side["ranking"] == "full" and side["sampled_ranking"] == "sampled-3"
    # full: user 0 has 9.0 and a tied 5.0 ahead (rank 2), user 1 has 3.0 and two tied 1.0s (3)
    assert side["mrr"] == pytest.approx((1 / 3 + 1 / 4) / 2)
    for k in ("mrr", "hr_at_5", "ndcg_at_10"):
        assert side[f"sampled_{k}"] == got[k]
    # user 0: target 5.0; negatives 1.0, 2.0, 5.0 (tie ahead) → rank 1; item 3 (9.0) not drawn
    # user 1: target 1.0; negatives 1.0 (tie), 0.5, 1.0 (tie) → rank 2
    assert got["ranking"] == "sampled-3"
    assert got["mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert got["hr_at_5"] == 1.0


def test_popularity_baseline_recommends_the_most_frequent_training_targets() -> None:
    train = {"labels": np.array([3, 3, 3, 1, 1, 4, 2, 2, 2, 2])}  # 2 > 3 > 1 > 4; 5, 6 unseen
    test = {"labels": np.array([2, 4, 6, 3]), "seen": np.array([[0, 0], [2, 3], [0, 0], [2, 0]])}
    rows = TASK.baselines({"train": train, "valid": test, "test": test}, 7)
    pop = rows["popularity"]
    # by hand: user 0 → 2 first (rank 0); user 1 (2, 3 seen) → 1, 4: rank 1;
    # user 2 → 2, 3, 1, 4, then 5 before 6 (equal counts: smaller id first): rank 5;
    # user 3 (2 seen) → 3 first: rank 0
    ranks = np.array([0, 1, 5, 0])
    assert pop["mrr"] == pytest.approx(np.mean(1 / (ranks + 1)))
    assert pop["valid_mrr"] == pop["mrr"] and pop["ranking"] == "full"
    assert pop["hr_at_5"] == pytest.approx(0.75)


def test_zero_shot_and_transfer_popularity_rows_by_a_per_user_loop() -> None:
    """zero_shot: the cosine of each user's vector and each item's vector, ranked per user by
    the loop; the transfer split's popularity uses its own ``item_counts``, not the source's
    training targets."""
    rng = np.random.default_rng(4)
    items, n, dim = 12, 30, 5
    item_vectors = rng.normal(size=(items, dim)).astype(np.float32)
    item_vectors[0] = 0.0
    split = _split(n, items, 5)
    split["user_vectors"] = rng.normal(size=(n, dim)).astype(np.float32)
    split["item_vectors"] = item_vectors
    other = _split(n, 8, 6)  # another catalogue of 7 items
    other["item_counts"] = np.array([0, 1, 2, 9, 0, 4, 3, 5])  # 3 > 7 > 5 > 6 > 2 > 1 > 4
    train = {"labels": np.array([1, 1, 1, 2])}
    rows = TASK.baselines({"train": train, "valid": split, "test": split, "transfer": other}, items)

    def loop(vectors_of_users, vectors_of_items, sp, rows_n):
        ranks = []
        for u in range(rows_n):
            a = vectors_of_users(u)
            scores = [
                0.0 if not np.any(v) else float(a @ v / np.linalg.norm(a) / np.linalg.norm(v))
                for v in vectors_of_items
            ]
            seen = {int(s) for s in sp["seen"][u] if s}
            t = int(sp["labels"][u])
            cands = (set(range(1, len(vectors_of_items))) - seen) | {t}
            ranks.append(_loop_rank(np.asarray(scores), t, cands))
        return np.asarray(ranks)

    r = loop(lambda u: split["user_vectors"][u].astype(np.float64), item_vectors, split, n)
    assert rows["zero_shot"]["mrr"] == pytest.approx(np.mean(1 / (r + 1)), rel=1e-6)
    assert rows["zero_shot"]["valid_mrr"] == rows["zero_shot"]["mrr"]
    assert "transfer_mrr" not in rows["zero_shot"]  # the transfer split has no vectors here
    order = [3, 7, 5, 6, 2, 1, 4]  # by the transfer domain's own counts
    pop_scores = np.zeros(8)
    pop_scores[order] = np.arange(7, 0, -1)
    r = []
    for u in range(n):
        seen = {int(s) for s in other["seen"][u] if s}
        t = int(other["labels"][u])
        r.append(_loop_rank(pop_scores, t, (set(range(1, 8)) - seen) | {t}))
    r = np.asarray(r)
    assert rows["popularity"]["transfer_mrr"] == pytest.approx(np.mean(1 / (r + 1)))


def test_example_quality_is_the_reciprocal_rank_over_all_items_but_padding() -> None:
    g = torch.Generator().manual_seed(0)
    outputs = torch.randint(0, 3, (20, 9), generator=g).double()
    targets = torch.randint(1, 9, (20,), generator=g)
    q = TASK.example_quality(outputs, targets)
    for u in range(20):
        r = _loop_rank(outputs[u].numpy(), int(targets[u]), set(range(1, 9)))
        assert float(q[u]) == pytest.approx(1 / (r + 1))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("teacher.model=scratch:gpt5", "unknown preset 'gpt5'"),
        ("teacher.model=embedded:all-MiniLM-L6-v2", "scratch:gpt2"),
        ("pipeline.order=[truncate,distill,early_exit]", "early_exit compresses rating_classif"),
        ("data.transfer={corpus: amazon-2018}", "data.transfer: another domain"),
        ("teacher.model=text:scratch:gpt2", "teacher.model"),
        ("data.recsys.item_init=titles", None),  # valid: the LM-enhanced sequence variant
        ("data.recsys.ranking=sampled", None),  # valid: 100 negatives by default
        ("data.recsys.negatives=0", None),  # valid: no side figures
    ],
)
def test_study_mistakes_are_one_line_errors_before_any_work(override, message) -> None:
    from engine.config import ConfigError, load_study

    if message is None:
        load_study("smoke-rec", [override])
        return
    with pytest.raises(ConfigError, match=message):
        load_study("smoke-rec", [override])
    with pytest.raises(ConfigError, match="negatives >= 1"):
        load_study("smoke-rec", ["data.recsys.ranking=sampled", "data.recsys.negatives=0"])


def test_teacher_training_targets_are_each_positions_next_item() -> None:
    ids = np.array([[0, 0, 4, 7, 2], [3, 1, 8, 5, 6]])
    train = {
        "input_ids": ids,
        "attention_mask": (ids != 0).astype(np.int64),
        "labels": np.array([9, 2]),
    }
    got = TASK.teacher_training(train)
    want = []
    for row, label in zip(ids.tolist(), [9, 2], strict=True):  # by hand, position by position
        want.append([row[t + 1] if row[t] and row[t + 1] else -100 for t in range(4)] + [label])
    assert got.arrays["labels"].tolist() == want == [[-100, -100, 7, 2, 9], [1, 8, 5, 6, 2]]
    assert got.forward_kwargs == {"all_positions": True}
    # the loss is the mean cross-entropy over the 8 positions with a target (3 + 5)
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    targets = torch.as_tensor(got.arrays["labels"])
    terms = [
        float(torch.nn.functional.cross_entropy(logits[b, t : t + 1], targets[b, t : t + 1]))
        for b in range(2)
        for t in range(5)
        if targets[b, t] >= 0
    ]
    assert len(terms) == 8
    assert float(got.loss(logits, targets)) == pytest.approx(sum(terms) / 8, rel=1e-6)


def test_title_vectors_and_catalogues_enter_the_teacher_cache_key() -> None:
    """A teacher started from title vectors (or scoring a text catalogue) is another teacher:
    its cache key differs from the one without them, and changes with their values."""
    from engine.config import TeacherConfig
    from engine.teacher import teacher_key

    train = {
        "input_ids": np.array([[0, 1, 2], [1, 2, 3]]),
        "attention_mask": np.array([[0, 1, 1], [1, 1, 1]]),
        "labels": np.array([3, 4]),
    }
    cfg = TeacherConfig(model="scratch:gpt2")
    plain = teacher_key(cfg, train, 5, task="next_item")
    vectors = np.arange(20, dtype=np.float32).reshape(5, 4)
    for key in ("title_vectors", "item_vectors"):
        with_v = teacher_key(cfg, {**train, key: vectors}, 5, task="next_item")
        other = teacher_key(cfg, {**train, key: vectors + 1}, 5, task="next_item")
        assert len({plain, with_v, other}) == 3
        assert teacher_key(cfg, {**train, key: vectors.copy()}, 5, task="next_item") == with_v
