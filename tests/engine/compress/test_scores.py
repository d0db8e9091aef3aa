"""Unit scores (engine/compress/scores.py): the ``fluctuation`` criterion against a per-example
loop over each example's real tokens and NumPy's variance (the other criteria are checked in
``test_prune.py``, beside the stage that uses them)."""

from __future__ import annotations

import numpy as np
import torch

from engine.compress.scores import unit_scores
from tests.conftest import inputs_per_example, tiny_bert, toy_batches

D = 8  # tiny_bert head size


def test_fluctuation_is_token_variance_times_the_squared_output_column_norm() -> None:
    model = tiny_bert(num_layers=2).eval()
    batches = toy_batches(3, seed=7)
    h, n = unit_scores(model, "fluctuation", heads=True, batches=batches)
    assert h is not None
    ffn_x = [x.numpy() for x in inputs_per_example(model, batches, lambda blk: blk.output.dense)]
    att_x = [
        x.numpy() for x in inputs_per_example(model, batches, lambda b: b.attention.output.dense)
    ]
    for i, blk in enumerate(model.bert.encoder.layer):
        w_ffn = blk.output.dense.weight.detach().double().numpy()  # [out, in]
        want_n = ffn_x[i].var(0) * (w_ffn**2).sum(0)
        np.testing.assert_allclose(n[i].numpy(), want_n, rtol=1e-4, atol=1e-9)
        w_att = blk.attention.output.dense.weight.detach().double().numpy()
        per_col = att_x[i].var(0) * (w_att**2).sum(0)
        want_h = per_col.reshape(-1, D).sum(1)  # head h owns columns h·D … (h+1)·D
        np.testing.assert_allclose(h[i].numpy(), want_h, rtol=1e-4, atol=1e-9)
    assert float(torch.stack(h).min()) > 0  # every head varies, so the check is informative


def test_a_constant_unit_has_zero_fluctuation_however_large_its_output() -> None:
    model = tiny_bert(num_layers=2).eval()
    with torch.no_grad():
        blk = model.bert.encoder.layer[0]
        blk.intermediate.dense.weight[3] = 0.0
        blk.intermediate.dense.bias[3] = 4.0  # gelu(4) on every token
        blk.output.dense.weight[:, 3] = 10.0
    _, n = unit_scores(model, "fluctuation", heads=False, batches=toy_batches(2))
    assert float(n[0][3]) < 1e-9
    assert int(n[0].argmin()) == 3
    # magnitude ranks it the most important neuron of the layer
    _, m = unit_scores(model, "magnitude", heads=False)
    assert int(m[0].argmax()) == 3


def test_every_registered_criterion_scores_each_unit_of_each_layer() -> None:
    """The registry is the list: each criterion gives one score per head unit and per FFN
    neuron of every block (counted from the modules' weights), finite."""
    from engine.compress.scores import CRITERIA
    from engine.models import layer_list

    model = tiny_bert(num_layers=2).eval()
    blocks = layer_list(model)
    heads = [b.attention.self.query.weight.shape[0] // D for b in blocks]
    neurons = [b.intermediate.dense.weight.shape[0] for b in blocks]
    assert set(CRITERIA) == {"magnitude", "taylor", "fisher", "weight_taylor", "fluctuation"}
    for name in CRITERIA:
        h, n = unit_scores(model, name, heads=True, batches=toy_batches(2, seed=1))
        assert [len(x) for x in h] == heads and [len(x) for x in n] == neurons, name
        assert all(torch.isfinite(x).all() for x in [*h, *n]), name


def test_a_criterion_is_one_registered_function_the_config_accepts() -> None:
    """Registering a criterion is all it takes: the prune settings accept its name and
    ``unit_scores`` calls it; an unknown name is one error that suggests the nearest."""
    import pytest

    from engine.compress.prune import PruneConfig
    from engine.compress.scores import CRITERIA

    @CRITERIA.register("by_position")
    def by_position(model, batches, heads, device, task):
        from engine.models import layer_list

        blocks = layer_list(model)
        width = [b.intermediate.dense.weight.shape[0] for b in blocks]
        return None, [torch.arange(w, 0, -1, dtype=torch.float32) for w in width]

    try:
        assert PruneConfig(criterion="by_position").criterion == "by_position"
        _, n = unit_scores(tiny_bert(num_layers=1), "by_position", heads=False)
        assert n[0].tolist() == list(range(64, 0, -1))
    finally:
        CRITERIA.unregister("by_position")
    with pytest.raises(ValueError, match="did you mean 'fisher'"):
        PruneConfig(criterion="fisherr")
    with pytest.raises(ValueError, match="unknown pruning criterion 'by_position'"):
        PruneConfig(criterion="by_position")
