"""engine.state_io: a nested training state written as typed JSON plus safetensors comes back
equal in every value, type and dtype — checked on a real AdamW and LR schedule after real steps,
a generator's state, NumPy scalars, int-keyed dicts and tuples — and what it cannot write is a
TypeError naming where it sits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.state_io import decode, encode


def _same(a, b) -> bool:
    """Equal by definition: same type, and tensors equal with the same dtype and shape."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def _round_trip(tree, tmp_path):
    """Through the files a checkpoint writes: JSON text and a safetensors file."""
    skeleton, tensors = encode(tree)
    (tmp_path / "s.json").write_text(json.dumps(skeleton))
    save_file(tensors, str(tmp_path / "t.safetensors"))
    return decode(
        json.loads((tmp_path / "s.json").read_text()), load_file(tmp_path / "t.safetensors")
    )


def test_a_real_optimizer_schedule_and_sampler_state_come_back_equal(tmp_path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()
    gen = torch.Generator().manual_seed(7)
    torch.randperm(10, generator=gen)
    tree = {
        "optimizer": opt.state_dict(),  # state keyed by int, betas a tuple, step tensors
        "scheduler": sched.state_dict(),
        "generator": gen.get_state(),  # a uint8 tensor
        "order": torch.randperm(12),
        "losses": [np.float32(0.1), np.float32(0.7), 0.5],  # float32 stays float32
        "count": np.int64(3),
        "flags": (True, None, float("nan"), float("inf")),
        "$tensor": "a key that looks like a tag",
        "stage": {"masks": [torch.rand(2, 2) > 0.5], "next": 2, "widths": None},
    }
    back = _round_trip(tree, tmp_path)
    assert _same(back, tree)
    assert isinstance(back["optimizer"]["state"], dict) and list(back["optimizer"]["state"]) == [
        0,
        1,
        2,
        3,
    ]
    assert back["losses"][0].dtype == np.float32 and back["count"].dtype == np.int64
    # the optimizer and schedule accept it and continue exactly as the originals
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    opt2.load_state_dict(back["optimizer"])
    assert _same(opt2.state_dict(), opt.state_dict())


def test_what_cannot_be_written_without_pickle_is_named(tmp_path) -> None:
    with pytest.raises(TypeError, match=r"stage\.extra\[1\]: a object cannot be saved"):
        encode({"stage": {"extra": [1, object()]}})
    with pytest.raises(TypeError, match="ndarray"):
        encode({"a": np.zeros(3)})
