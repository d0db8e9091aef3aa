"""Reference tests of the forward-family importance methods, each against an independent
computation from the method's definition (never a call or a re-typed copy of the code under
test): planted inputs with known answers, per-example loops, an integral computed with
autograd, a distribution whose mutual information is integrated numerically.

Measured tolerances and biases are stated next to each assertion.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, optimize, stats
from torch import autograd

import engine.importance  # noqa: F401  (registers every method)
from engine.importance import IMPORTANCE
from engine.importance.attention import attention_per_batch, normalised_entropy
from engine.importance.block_influence import block_influence_per_batch
from engine.importance.config import ImportanceConfig
from engine.importance.fwdpass import FwdBatch
from engine.importance.mutual_info import binned_mi, knn_mi, ksg_mi
from engine.models import layer_list
from tests.conftest import tiny_bert, tiny_gpt2, tiny_llama, toy_batches

BUILDERS = {"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama}

# which methods yield per-example contributions (the score is a mean over examples) and
# which are defined on whole batches (an estimator over a batch, a ratio of batch sums)
PER_EXAMPLE = (
    "ablation",
    "ablation_accuracy",
    "block_influence",
    "attention",
    "conductance",
    "mc_dropout",
)
PER_BATCH = ("mutual_info", "activation_patching")
FAST = {"conductance_steps": 4, "mc_samples": 3}


def hidden(out: object) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]  # type: ignore[index]


def with_hidden(out: object, new: torch.Tensor) -> object:
    return new if isinstance(out, torch.Tensor) else (new, *tuple(out)[1:])  # type: ignore[arg-type]


def plant(model: torch.nn.Module, updates: dict[int, float]) -> list:
    """Test-owned hooks: block l's output becomes ``in + c_l · (out − in)`` (c = 0: identity).

    Registered before any method runs, so a method's own hooks see the planted output."""
    handles = []
    for layer, c in updates.items():

        def hook(_m, args, kwargs, out, c=c):
            h_in = args[0] if args else kwargs["hidden_states"]
            return with_hidden(out, h_in + c * (hidden(out) - h_in))

        block = layer_list(model)[layer]
        handles.append(block.register_forward_hook(hook, with_kwargs=True))
    return handles


def one_example(batch: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i : i + 1] for k, v in batch.items()}


# --- the per-example contract ----------------------------------------------------------------


@pytest.mark.parametrize("method", PER_EXAMPLE + PER_BATCH)
def test_per_example_rows_average_to_per_batch_and_a_batch_of_one_gives_its_row(
    method: str,
) -> None:
    """Rows are per-example contributions: batch j's rows average to ``per_batch[j]``, their
    mean is the score, and scoring one example alone (its slice of the batch, same padding)
    gives that example's row. Float64 model, so batched and single forwards agree to ~1e-15."""
    model = tiny_gpt2(num_layers=3).double()
    batches = toy_batches(1, 4, 10, seed=5) + toy_batches(1, 3, 10, seed=6)
    cfg = ImportanceConfig(**FAST)
    got = IMPORTANCE.get(method)(model, batches, cfg=cfg)
    if method in PER_BATCH:
        assert got.per_example is None  # defined on whole batches: bootstrapped over batches
        return
    rows = np.asarray(got.per_example)
    assert rows.shape == (7, 3) and np.isfinite(rows).all()
    np.testing.assert_allclose(got.per_batch, [rows[:4].mean(0), rows[4:].mean(0)], rtol=1e-12)
    np.testing.assert_allclose(got.scores, rows.mean(0), rtol=1e-12, atol=1e-15)
    for i in range(4):
        alone = IMPORTANCE.get(method)(model, [one_example(batches[0], i)], cfg=cfg)
        np.testing.assert_allclose(alone.per_example, rows[i : i + 1], rtol=1e-9, atol=1e-12)


FLOAT32_ATOL = 4 * float(np.finfo(np.float32).eps)  # 4.8e-7: 4 float32 ulps of a score of 1
GOLDEN = Path(__file__).resolve().parents[2] / "assets" / "importance_scores_609d401.json"


def golden_entries() -> list[dict]:
    return json.loads(GOLDEN.read_text())["entries"]


@pytest.mark.parametrize(
    "entry",
    [e for e in golden_entries() if e["method"] != "mc_dropout"],
    ids=lambda e: f"{e['family']}-{e['method']}-{'-'.join(map(str, e['cfg'].values()))}",
)
def test_scores_equal_those_recorded_on_main_before_per_example_rows(entry: dict) -> None:
    """The per-example refactor leaves every score as main (609d401) computed it.

    Exceptions, each a deliberate later change: ablation's log-probabilities moved from
    float32 to float64 (scores move by ≤ 7.2e-8, float32's log-probability resolution), and
    mc_dropout draws one mask generator per example (a new Monte Carlo draw: not compared).

    Tolerance: every score is built from the float32 forward's logits, probabilities and
    cosines, quantities of order 1 whose float32 resolution is 1.19e-7. The same code in the
    same venv reproduces the recorded means to ≤ 1e-16 (summation order only); a later build of
    the venv (2026-12-05: torch 2.13.0+cpu, transformers 5.25.0, numpy 2.4.6) moves them by
    ≤ 2.7e-7 absolute (bert activation_patching, about 2 float32 ulps of 1), for methods and
    commits alike — 2723d95, which CI passed, moves by the same amounts. ``FLOAT32_ATOL`` (4
    ulps of 1) admits that rounding; the check is of definitions, not of kernel builds."""
    model = BUILDERS[entry["family"]](num_layers=3)
    batches = toy_batches(1, 5, 10, seed=1) + toy_batches(1, 3, 10, seed=2)
    got = IMPORTANCE.get(entry["method"])(model, batches, cfg=ImportanceConfig(**entry["cfg"]))
    np.testing.assert_allclose(got.scores, entry["scores"], rtol=1e-6, atol=FLOAT32_ATOL)


# --- ablation --------------------------------------------------------------------------------


def log_probs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], skip: int | None
) -> torch.Tensor:
    """Class log-probabilities of a one-example batch, block ``skip`` (if any) skipped by the
    test's own hook."""
    handles = [] if skip is None else plant(model, {skip: 0.0})
    try:
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    return torch.log_softmax(out.logits[0].double(), -1)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_ablation_matches_a_per_example_skip_loop(family: str) -> None:
    """Oracle: each example run alone, block l skipped by the test's own hook, loss, KL and
    accuracy from the definition (float64 model: agreement to 1e-9 relative)."""
    model = BUILDERS[family](num_layers=3).double()
    batches = toy_batches(1, 5, 10, seed=7) + toy_batches(1, 3, 10, seed=8)
    loss = IMPORTANCE.get("ablation")(model, batches, cfg=ImportanceConfig(ablation_metric="loss"))
    kl = IMPORTANCE.get("ablation")(model, batches, cfg=ImportanceConfig(ablation_metric="kl"))
    acc = IMPORTANCE.get("ablation_accuracy")(model, batches, cfg=ImportanceConfig())
    want_loss, want_kl, want_acc = [], [], []
    for batch in batches:
        for i in range(batch["labels"].shape[0]):
            one = one_example(batch, i)
            y = int(one["labels"])

            clean = log_probs(model, one, skip=None)
            rows = [log_probs(model, one, skip=layer) for layer in range(3)]
            want_loss.append([float(clean[y] - q[y]) for q in rows])
            want_kl.append([float((clean.exp() * (clean - q)).sum()) for q in rows])
            hit = float(clean.argmax() == y)
            want_acc.append([hit - float(q.argmax() == y) for q in rows])
    np.testing.assert_allclose(loss.per_example, want_loss, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(kl.per_example, want_kl, rtol=1e-9, atol=1e-13)
    np.testing.assert_array_equal(acc.per_example, want_acc)
    assert (np.asarray(kl.per_example) >= 0).all()


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_ablation_of_a_planted_identity_layer_is_exactly_zero_for_every_example(
    family: str,
) -> None:
    """A block whose output is its input (planted by the test's hook): skipping it changes
    nothing, bit for bit, for every example and every ablation metric."""
    model, batches = BUILDERS[family](num_layers=3), toy_batches(2, 4, 10)
    handles = plant(model, {1: 0.0})
    try:
        for metric in ("loss", "kl"):
            got = IMPORTANCE.get("ablation")(
                model, batches, cfg=ImportanceConfig(ablation_metric=metric)
            )
            assert (np.asarray(got.per_example)[:, 1] == 0.0).all(), metric
            assert (np.asarray(got.per_example)[:, [0, 2]] != 0.0).all(), metric
        acc = IMPORTANCE.get("ablation_accuracy")(model, batches, cfg=ImportanceConfig())
        assert (np.asarray(acc.per_example)[:, 1] == 0.0).all()
    finally:
        for h in handles:
            h.remove()


# --- block influence -------------------------------------------------------------------------


def test_block_influence_on_planted_rotations_and_scalings() -> None:
    """Hidden size 2: block 0 rotates each token by a known angle θ_t (1 − cos θ_t), block 1
    scales by 3 (0), block 2 by −0.5 (2). Padding tokens carry a 90° turn that must not count."""
    g = torch.Generator().manual_seed(0)
    b, s = 3, 5
    phi = torch.rand(b, s, generator=g, dtype=torch.float64) * 2 * math.pi
    r = 0.5 + torch.rand(b, s, generator=g, dtype=torch.float64)
    theta = torch.rand(b, s, generator=g, dtype=torch.float64) * math.pi
    mask = torch.ones(b, s, dtype=torch.long)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    theta[mask == 0] = math.pi / 2
    x = torch.stack([r * phi.cos(), r * phi.sin()], -1)
    rot = 2.0 * torch.stack([(phi + theta).cos(), (phi + theta).sin()], -1)
    fb = FwdBatch([x, x, x], [rot, 3.0 * x, -0.5 * x], None, mask.bool(), torch.zeros(b))
    got = block_influence_per_batch(fb, ImportanceConfig())
    want = np.zeros((b, 3))
    for i in range(b):
        real = [t for t in range(s) if mask[i, t]]
        want[i, 0] = sum(1.0 - math.cos(float(theta[i, t])) for t in real) / len(real)
        want[i, 2] = 2.0
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_block_influence_through_a_model_with_planted_layers(family: str) -> None:
    """Block 1 planted to output −2·input (1 − cos = 2 exactly), block 2 the identity (0);
    block 0 left as it is and checked against the test's own capture of its hidden states and
    ``F.cosine_similarity`` averaged over real tokens."""
    model, (batch,) = BUILDERS[family](num_layers=3), toy_batches(1, 6, 10, seed=3)
    seen: dict[str, torch.Tensor] = {}

    def capture(_m, args, kwargs, out):
        seen["in"] = (args[0] if args else kwargs["hidden_states"]).detach()
        seen["out"] = hidden(out).detach()

    def minus_two(_m, args, kwargs, out):
        return with_hidden(out, -2.0 * (args[0] if args else kwargs["hidden_states"]))

    blocks = layer_list(model)
    handles = [
        blocks[0].register_forward_hook(capture, with_kwargs=True),
        blocks[1].register_forward_hook(minus_two, with_kwargs=True),
        *plant(model, {2: 0.0}),
    ]
    try:
        got = IMPORTANCE.get("block_influence")(model, [batch], cfg=ImportanceConfig())
    finally:
        for h in handles:
            h.remove()
    m = batch["attention_mask"].double()
    cos = F.cosine_similarity(seen["in"].double(), seen["out"].double(), dim=-1)
    want0 = ((1.0 - cos) * m).sum(1) / m.sum(1)
    rows = np.asarray(got.per_example)
    np.testing.assert_allclose(rows[:, 0], want0.numpy(), rtol=1e-10)
    np.testing.assert_allclose(rows[:, 1], 2.0, rtol=1e-12)
    assert (rows[:, 2] == 0.0).all()


# --- attention entropy -----------------------------------------------------------------------


def test_normalised_entropy_on_a_planted_attention_map() -> None:
    """B = 2, 2 heads, 4 tokens. Head 0 is causal (query 0 has one allowed key: skipped),
    head 1 bidirectional; in example 1 token 3 is padding (masked as a key, skipped as a
    query). The oracle loops over (example, head, query) with the allowed-key count written
    down here, not derived from the probabilities."""
    p = torch.zeros(2, 2, 4, 4, dtype=torch.float64)
    rows = {  # (example, head, query): (probabilities over the allowed keys, allowed keys)
        (0, 0, 1): ([0.5, 0.5], [0, 1]),
        (0, 0, 2): ([0.7, 0.2, 0.1], [0, 1, 2]),
        (0, 0, 3): ([0.25, 0.25, 0.25, 0.25], [0, 1, 2, 3]),
        (0, 1, 0): ([0.4, 0.3, 0.2, 0.1], [0, 1, 2, 3]),
        (0, 1, 1): ([0.97, 0.01, 0.01, 0.01], [0, 1, 2, 3]),
        (0, 1, 2): ([0.1, 0.1, 0.1, 0.7], [0, 1, 2, 3]),
        (0, 1, 3): ([0.25, 0.25, 0.25, 0.25], [0, 1, 2, 3]),
        (1, 0, 1): ([0.9, 0.1], [0, 1]),
        (1, 0, 2): ([1 / 3, 1 / 3, 1 / 3], [0, 1, 2]),
        (1, 1, 0): ([0.6, 0.3, 0.1], [0, 1, 2]),
        (1, 1, 1): ([0.2, 0.2, 0.6], [0, 1, 2]),
        (1, 1, 2): ([0.5, 0.25, 0.25], [0, 1, 2]),
    }
    for (b, h, q), (probs, keys) in rows.items():
        p[b, h, q, keys] = torch.tensor(probs, dtype=torch.float64)
    p[:, 0, 0, 0] = 1.0  # causal query 0: a single allowed key
    p[1, :, 3, :3] = torch.tensor([0.8, 0.1, 0.1])  # padding query: must be ignored
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])

    want = []
    for b in range(2):
        vals = [
            -sum(x * math.log(x) for x in probs) / math.log(len(keys))
            for (bb, _h, _q), (probs, keys) in rows.items()
            if bb == b
        ]
        want.append(sum(vals) / len(vals))  # 7 scored queries in example 0, 5 in example 1
    got = normalised_entropy(p, mask)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)

    fb = FwdBatch([], [], [p, p], mask.bool(), torch.zeros(2))
    ent = attention_per_batch(fb, ImportanceConfig(attention_score="entropy"))
    conc = attention_per_batch(fb, ImportanceConfig(attention_score="concentration"))
    np.testing.assert_allclose(ent, np.array([want, want]).T, rtol=1e-12)
    np.testing.assert_allclose(conc, 1.0 - np.array([want, want]).T, rtol=1e-12)


def zero_queries_and_keys(model: torch.nn.Module, family: str) -> None:
    """Every attention logit becomes 0: attention is uniform over the allowed keys."""
    with torch.no_grad():
        for block in layer_list(model):
            if family == "bert":
                for lin in (block.attention.self.query, block.attention.self.key):
                    lin.weight.zero_()
                    lin.bias.zero_()
            elif family == "gpt2":
                d = block.attn.c_attn.weight.shape[0]  # Conv1D: weight [in, 3·d], q | k | v
                block.attn.c_attn.weight[:, : 2 * d].zero_()
                block.attn.c_attn.bias[: 2 * d].zero_()
            else:
                block.self_attn.q_proj.weight.zero_()
                block.self_attn.k_proj.weight.zero_()


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_uniform_attention_forced_in_a_real_model_has_normalised_entropy_one(family: str) -> None:
    """Zero query/key weights: each scored query attends uniformly to its allowed keys
    (padding masked; in decoders the past only), so Ĥ = 1 for every example and layer — which
    also checks that the allowed keys counted are exactly the model's mask (float32
    probabilities: within 1e-6)."""
    model = BUILDERS[family](num_layers=2)
    zero_queries_and_keys(model, family)
    batches = toy_batches(2, 4, 10)
    ent = IMPORTANCE.get("attention")(
        model, batches, cfg=ImportanceConfig(attention_score="entropy")
    )
    np.testing.assert_allclose(ent.per_example, 1.0, atol=1e-6)
    conc = IMPORTANCE.get("attention")(model, batches, cfg=ImportanceConfig())
    np.testing.assert_allclose(conc.per_example, 0.0, atol=1e-6)


# --- conductance -----------------------------------------------------------------------------


def reference_conductance(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], alphas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conductance of every block's output units from the definition, independently of
    captum: ``∫₀¹ ∂F/∂y(α) · dy/dα dα`` on the straight path from zero word embeddings,
    F = the label's logit. ∂F/∂y by reverse mode; dy/dα (a Jacobian–vector product) by the
    double-backward trick; the trapezoid rule over the grid ``alphas`` (float64, from 0 to
    1), all α in one batched forward. Returns ``cond [L, B, S, H]`` and ``F(x) − F(0) [B]``."""
    emb = model.get_input_embeddings()
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    b, k = ids.shape[0], alphas.shape[0]
    with torch.no_grad():
        x = emb(ids)
    a = alphas.repeat_interleave(b).requires_grad_(True)  # one α per row
    path = a[:, None, None] * x.repeat(k, 1, 1)
    ys: list[torch.Tensor] = []
    handles = [emb.register_forward_hook(lambda _m, _a, _o: path)]
    handles += [
        blk.register_forward_hook(lambda _m, _a, o: ys.append(hidden(o)))
        for blk in layer_list(model)
    ]
    try:
        logits = model(input_ids=ids.repeat(k, 1), attention_mask=mask.repeat(k, 1)).logits
    finally:
        for h in handles:
            h.remove()
    f = logits.gather(1, labels.repeat(k)[:, None]).squeeze(1)
    d_f = autograd.grad(f.sum(), ys, retain_graph=True)
    probes = [torch.zeros_like(y, requires_grad=True) for y in ys]
    (vjp,) = autograd.grad(ys, a, grad_outputs=probes, create_graph=True)
    dy_da = autograd.grad(vjp.sum(), probes)
    integrand = torch.stack([(g * d).detach() for g, d in zip(d_f, dy_da, strict=True)])
    integrand = integrand.reshape(len(ys), k, b, *integrand.shape[2:])
    cond = torch.trapezoid(integrand, alphas, dim=1)
    fk = f.detach().reshape(k, b)
    return cond, fk[-1] - fk[0]


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_conductance_matches_an_independent_integral_and_completeness(family: str) -> None:
    """Oracle: the 256-step autograd integral above. It satisfies completeness (signed sum
    over a layer's units = F(x) − F(0); measured relative error ≤ 7e-6). The engine (captum)
    agrees per example within 0.3 % at 128 steps (measured 3.0e-4 BERT, 1.5e-3 GPT-2) and
    within 2 % at the default 16 steps (measured 0.96 % BERT, 0.66 % GPT-2)."""
    model = BUILDERS[family](num_layers=2).double()
    model.set_attn_implementation("eager")  # double backward through SDPA is not implemented
    (batch,) = toy_batches(1, 3, 8, seed=3)
    cond, delta_f = reference_conductance(model, batch, torch.linspace(0, 1, 257).double())
    for layer in range(2):
        np.testing.assert_allclose(cond[layer].sum((1, 2)), delta_f, rtol=1e-4)
    m = batch["attention_mask"].double()
    want = (cond.abs().sum(-1) * m).sum(-1).T.numpy()  # [B, L]
    for steps, rtol in ((128, 3e-3), (16, 2e-2)):
        got = IMPORTANCE.get("conductance")(
            model, [batch], cfg=ImportanceConfig(conductance_steps=steps)
        )
        np.testing.assert_allclose(got.per_example, want, rtol=rtol, err_msg=f"{steps} steps")


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="known defect: on RMSNorm decoders (no additive position embedding) the zero "
    "baseline makes the integrand steep near α = 0, which captum's left-point sum on 17 "
    "Gauss-Legendre nodes misses (measured per-example error 39 %; 26 % at 64 steps, "
    "7 % at 256, 1.9 % at 1024)",
)
def test_conductance_on_llama_matches_the_integral_at_the_default_steps() -> None:
    """Oracle: the same autograd integral on a grid graded towards α = 0 (α = t⁴, 1025
    points; completeness holds to 7e-4 relative there, while 257 equal steps miss it by 160 %)."""
    model = tiny_llama(num_layers=2).double()
    model.set_attn_implementation("eager")
    (batch,) = toy_batches(1, 3, 8, seed=3)
    cond, delta_f = reference_conductance(model, batch, torch.linspace(0, 1, 1025).double() ** 4)
    gap = ((cond.sum((2, 3)) - delta_f).abs() / delta_f.abs()).max()
    if gap > 2e-3:  # the oracle itself is off: a real failure, not the expected one
        raise RuntimeError(f"reference integral misses completeness by {float(gap):.2e}")
    want = (cond.abs().sum(-1) * batch["attention_mask"].double()).sum(-1).T.numpy()
    got = IMPORTANCE.get("conductance")(model, [batch], cfg=ImportanceConfig())
    np.testing.assert_allclose(got.per_example, want, rtol=0.05)


# --- mutual information ----------------------------------------------------------------------

# Planted: Y ∈ {0, 1} equiprobable (exactly N/2 each), Z | Y ~ N(±μ, 1). I(Z; Y) = h(Z) − h(Z|Y)
# with h(Z|Y) = ½ log(2πe) and h(Z) of the two-component mixture integrated numerically.
# (The Gaussian pair I = −½ log(1 − ρ²) needs a continuous Y; these estimators take labels.)


def mixture_pdf(z: float, mu: float) -> float:
    return 0.5 * stats.norm.pdf(z - mu) + 0.5 * stats.norm.pdf(z + mu)


def planted_mi(mu: float) -> float:
    h_z, _ = integrate.quad(
        lambda z: -mixture_pdf(z, mu) * math.log(mixture_pdf(z, mu)), -mu - 12, mu + 12
    )
    return h_z - 0.5 * math.log(2 * math.pi * math.e)


def planted_binned_mi(mu: float, bins: int) -> float:
    """I(Q(Z); Y) for Q the population equal-frequency bins of the mixture."""
    cdf = lambda z: 0.5 * stats.norm.cdf(z - mu) + 0.5 * stats.norm.cdf(z + mu)  # noqa: E731
    qs = np.linspace(0, 1, bins + 1)[1:-1]
    edges = [-np.inf, *(optimize.brentq(lambda z, q=q: cdf(z) - q, -30, 30) for q in qs), np.inf]
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        for sign in (1, -1):
            p_xy = 0.5 * (stats.norm.cdf(hi - sign * mu) - stats.norm.cdf(lo - sign * mu))
            total += p_xy * math.log(p_xy / (0.5 / bins))
    return total


def planted_sample(n: int, mu: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    return (rng.standard_normal(n) + np.where(y == 1, mu, -mu))[:, None], y


def test_planted_mi_oracle_is_right_in_its_limits() -> None:
    # μ = 0: independent; μ → ∞: Z reveals Y, I → log 2; binning can only lose information
    assert planted_mi(0.0) == pytest.approx(0.0, abs=1e-9)
    assert planted_mi(6.0) == pytest.approx(math.log(2), abs=1e-6)
    assert 0 < planted_binned_mi(1.0, 4) < planted_mi(1.0)


@pytest.mark.parametrize(
    ("n", "mu", "bound"),
    # bias measured over 300 seeds: μ = 1 (I = 0.3368): +0.034 at N = 32 (per-batch sd 0.12),
    # +0.007 at N = 256 (sd 0.04); μ = 0 (I = 0, clipping at 0): +0.033 at 32, +0.012 at 256
    [(32, 1.0, 0.06), (256, 1.0, 0.02), (32, 0.0, 0.05), (256, 0.0, 0.02)],
)
def test_knn_mi_is_within_its_measured_bias_of_the_planted_mi(
    n: int, mu: float, bound: float
) -> None:
    est = np.array([knn_mi(*planted_sample(n, mu, seed), 3) for seed in range(200)])
    truth = planted_mi(mu)
    assert abs(est.mean() - truth) <= bound, (est.mean(), truth)
    assert (est >= 0).all()


def test_knn_mi_grows_with_the_planted_separation() -> None:
    means = [
        np.mean([knn_mi(*planted_sample(256, mu, seed), 3) for seed in range(40)])
        for mu in (0.0, 0.5, 1.0, 2.0)
    ]
    truths = [planted_mi(mu) for mu in (0.0, 0.5, 1.0, 2.0)]
    assert means == sorted(means) and truths == sorted(truths)
    np.testing.assert_allclose(means, truths, atol=0.03)


@pytest.mark.parametrize("n", [32, 256])
@pytest.mark.parametrize("mu", [0.0, 1.0])
def test_binned_mi_is_the_binned_mi_plus_the_miller_madow_bias(n: int, mu: float) -> None:
    """The plug-in estimates I(Q(Z); Y) (0.3136 for μ = 1, 4 bins, below I = 0.3368) with the
    upward bias (bins − 1)(classes − 1)/2N = 3/2N (Miller 1955). Measured over 300 seeds:
    +0.047 vs 0.047 at N = 32, +0.0075 vs 0.0059 at N = 256; asserted within 4 standard
    errors of the mean over 200 seeds."""
    est = np.array([binned_mi(*planted_sample(n, mu, seed), 4) for seed in range(200)])
    expected = planted_binned_mi(mu, 4) if mu else 0.0
    expected += 3 / (2 * n)
    assert abs(est.mean() - expected) <= 4 * est.std() / math.sqrt(len(est)), (est.mean(), expected)


# Kraskov's estimator (continuous Z and W, used when the targets are items): the Gaussian
# pair W = ρZ + √(1 − ρ²)E in d independent coordinates has I(Z; W) = −(d/2) log(1 − ρ²).


def gaussian_pair(n: int, d: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z, e = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    return z, rho * z + math.sqrt(1 - rho**2) * e


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ksg_mi_equals_scikit_learn_on_one_dimension(seed: int) -> None:
    """scikit-learn's ``mutual_info_regression`` is the same estimator (Kraskov 2004, eq. 8)
    written independently (KD-trees, radius just below ε). It rescales each variable to unit
    standard deviation and adds 1e-10 noise, so the inputs are standardised first."""
    from sklearn.feature_selection import mutual_info_regression

    z, w = gaussian_pair(300, 1, 0.7, seed)
    z, w = (z - z.mean()) / z.std(), (w - w.mean()) / w.std()
    ref = mutual_info_regression(z, w[:, 0], n_neighbors=3, random_state=0)[0]
    assert ksg_mi(z, w, 3) == pytest.approx(ref, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    ("d", "rho", "bound"),
    # bias measured over 200 seeds at N = 256: ρ = 0.6, d = 1 (I = 0.2231): +0.004 (sd 0.06);
    # ρ = 0 (I = 0, clipping at 0): +0.017 at d = 1, +0.020 at d = 2
    [(1, 0.6, 0.02), (1, 0.0, 0.03), (2, 0.0, 0.03)],
)
def test_ksg_mi_is_within_its_measured_bias_of_the_gaussian_mi(
    d: int, rho: float, bound: float
) -> None:
    est = np.array([ksg_mi(*gaussian_pair(256, d, rho, seed), 3) for seed in range(100)])
    truth = -d / 2 * math.log(1 - rho**2)
    assert abs(est.mean() - truth) <= bound, (est.mean(), truth)
    assert (est >= 0).all()


def test_ksg_mi_ranks_dependence_at_the_engines_batch_size_and_dims() -> None:
    """At N = 32, d = 8 (the defaults) the estimate is far below the truth once the MI is
    large (measured 0.34 for I = 1.79, 1.05 for I = 6.64): it orders layers, it does not
    measure them. The order is kept."""
    means = [
        np.mean([ksg_mi(*gaussian_pair(32, 8, rho, seed), 3) for seed in range(40)])
        for rho in (0.0, 0.6, 0.9)
    ]
    assert means == sorted(means) and means[2] - means[0] > 0.5, means


# --- mc_dropout ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_mc_dropout_orders_planted_update_scales(family: str) -> None:
    """Block 0's residual update scaled ×20 (planted by the test's hook), block 2's ×0 (the
    identity). Dropout on a zero update is no noise: exactly zero variance and (up to the
    rounding of a mean of equal vectors) zero entropy increase for every example; the ×20
    block scores highest under both metrics, and its mean entropy increase is positive."""
    model, batches = BUILDERS[family](num_layers=3), toy_batches(2, 4, 10)
    handles = plant(model, {0: 20.0, 2: 0.0})
    try:
        var = IMPORTANCE.get("mc_dropout")(
            model, batches, cfg=ImportanceConfig(mc_metric="variance")
        )
        ent = IMPORTANCE.get("mc_dropout")(
            model, batches, cfg=ImportanceConfig(mc_metric="entropy")
        )
    finally:
        for h in handles:
            h.remove()
    v, e = np.asarray(var.per_example), np.asarray(ent.per_example)
    np.testing.assert_allclose(v[:, 2], 0.0, atol=1e-30)
    np.testing.assert_allclose(e[:, 2], 0.0, atol=1e-12)
    assert var.ranks()[0] == 0 and ent.ranks()[0] == 0
    assert (v[:, 0] > v[:, 1]).all() and (v[:, 1] > 0).all()
    assert ent.scores[0] > 0  # one example may still sharpen by chance (GPT-2: 1 of 8 does)


# --- activation patching ---------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("corruption", ["token_noise", "other_example"])
def test_patching_recovers_nothing_from_identity_layers_and_everything_from_the_only_one(
    family: str, corruption: str
) -> None:
    """Every block but block 1 planted as the identity; block 1's update scaled ×1000, so the
    final norm sees (almost) only that update. Patching an identity block adds a zero update:
    the run is the corrupted run, recovery exactly 0. Patching block 1's clean update restores
    the clean output up to the embedding's O(1/1000) share: recovery ≈ 1 (measured
    1 − r ≤ 9e-5 over both families and corruptions)."""
    model, batches = BUILDERS[family](num_layers=4), toy_batches(2, 4, 10)
    if corruption == "other_example":
        # patching is position-aligned: an example rolled in with another length is pooled at
        # another position, where the clean update differs (measured recovery 0.91-0.97)
        batches = [
            {**b, "attention_mask": torch.ones_like(b["attention_mask"]), "input_ids": ids}
            for b, ids in zip(batches, [b["input_ids"].clamp_min(5) for b in batches], strict=True)
        ]
    handles = plant(model, {0: 0.0, 1: 1000.0, 2: 0.0, 3: 0.0})
    try:
        got = IMPORTANCE.get("activation_patching")(
            model, batches, cfg=ImportanceConfig(patch_corruption=corruption)
        )
    finally:
        for h in handles:
            h.remove()
    pb = np.asarray(got.per_batch)
    assert (pb[:, [0, 2, 3]] == 0.0).all()
    np.testing.assert_allclose(pb[:, 1], 1.0, atol=1e-3)
