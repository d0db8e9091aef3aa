"""Nested training state on disk without pickle: the tensors as safetensors, the rest as JSON.

A trial checkpoint's training state (:meth:`engine.train.TrainingState.snapshot`: optimizer and
LR-schedule state dicts, the sampler's generator state, the example order, RNG states, a
multi-call stage's own progress) is a tree of dicts, lists, tuples, tensors and plain scalars.
:func:`encode` splits such a tree into a JSON-able skeleton and a flat ``{key: tensor}``
dict; :func:`decode` puts it back together, equal in every value, type and dtype:

* a tensor becomes ``{"$tensor": key}`` (saved with its dtype and shape, on CPU);
* a tuple becomes ``{"$tuple": [...]}`` and a dict whose keys are not all strings (an
  optimizer's ``state`` is keyed by parameter index) ``{"$dict": [[key, value], ...]}``;
* ``None``, bools, ints, floats (also ``nan`` and ``inf``, as Python's JSON writes them) and
  strings stay as they are; a NumPy scalar becomes ``{"$numpy": [dtype, value]}`` and comes
  back with its dtype (a ``float32`` loss stays one, so sums over it round the same way).

Anything else (an arbitrary object, a NumPy array) is a ``TypeError`` naming where it sits in
the tree, so a state that cannot be written this way fails at the checkpoint, not at resume.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["decode", "encode"]

_TAGS = ("$tensor", "$tuple", "$dict", "$numpy")


def encode(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """``(skeleton, tensors)``: ``tree`` as JSON-able data, its tensors apart (module docstring)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, torch.Tensor):
            key = f"t{len(tensors)}"
            # a copy of its own: safetensors refuses tensors that share memory
            tensors[key] = node.detach().to("cpu", copy=True).contiguous()
            return {"$tensor": key}
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, np.number | np.bool_):  # a NumPy scalar keeps its dtype
            return {"$numpy": [node.dtype.str, node.item()]}
        if isinstance(node, tuple):
            return {"$tuple": [walk(v, f"{where}[{i}]") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, dict):
            plain = all(isinstance(k, str) and k not in _TAGS for k in node)
            if plain:
                return {k: walk(v, f"{where}.{k}") for k, v in node.items()}
            for k in node:
                if k is not None and not isinstance(k, bool | int | float | str):
                    raise TypeError(f"{where or 'state'}: a key of type {type(k).__name__}")
            return {"$dict": [[k, walk(v, f"{where}[{k!r}]")] for k, v in node.items()]}
        raise TypeError(
            f"{where or 'state'}: a {type(node).__name__} cannot be saved without pickle "
            "(tensors, dicts, lists, tuples, strings, numbers, bools and None can)"
        )

    return walk(tree, ""), tensors


def decode(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The tree :func:`encode` split into ``skeleton`` and ``tensors``."""
    if isinstance(skeleton, list):
        return [decode(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if set(skeleton) == {"$tensor"}:
        return tensors[skeleton["$tensor"]]
    if set(skeleton) == {"$tuple"}:
        return tuple(decode(v, tensors) for v in skeleton["$tuple"])
    if set(skeleton) == {"$numpy"}:
        dtype, value = skeleton["$numpy"]
        return np.dtype(dtype).type(value)
    if set(skeleton) == {"$dict"}:
        return {k: decode(v, tensors) for k, v in skeleton["$dict"]}
    return {k: decode(v, tensors) for k, v in skeleton.items()}
