"""The gradual sparsity schedule of Zhu & Gupta (2017), "To prune, or not to prune".

    s_t = s_f + (s_i − s_f) · (1 − t/n)^e,   t = 0 … n

starts at s_i, ends at s_f, and prunes fastest early (e = 3 in the paper) while the network
still has redundancy to spare. Pruning happens every ``every`` steps and at t = n.
"""

from __future__ import annotations

__all__ = ["pruning_events", "sparsity_at"]


def sparsity_at(t: int, *, initial: float, final: float, steps: int, exponent: float) -> float:
    """Sparsity at step ``t`` (clamped to [0, steps]); ``steps == 0`` is one-shot (= final)."""
    if steps <= 0:
        return final
    frac = min(max(t, 0), steps) / steps
    return final + (initial - final) * (1.0 - frac) ** exponent


def pruning_events(
    *, initial: float, final: float, steps: int, every: int, exponent: float
) -> list[tuple[int, float]]:
    """``(t, s_t)`` at every pruning step: t = 0, every, 2·every, … and always t = steps."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    ts = sorted({*range(0, steps + 1, every), steps})
    return [
        (t, sparsity_at(t, initial=initial, final=final, steps=steps, exponent=exponent))
        for t in ts
    ]
