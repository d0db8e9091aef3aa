"""bench/report_cost.py's timed reporter: on the real prune stage (a gradual schedule whose
model shrinks at three pruning events, then recovery), every report is timed, and a report
says it counted the cost metrics exactly when the model's GFLOPs differ from the previous
report's — the engine counts fvcore GFLOPs again only when the architecture changed."""

from __future__ import annotations

import torch

from bench.report_cost import TimedReporter
from engine.trial import build_student
from tests.engine.compress.test_prune_resume import _study
from tests.engine.test_checkpoint import _shared


def test_timed_reporter_counts_cost_only_when_the_architecture_changed() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        study, shared = _study(), _shared()
        sent: list[dict] = []
        reporter = TimedReporter(study, shared.splits["valid"], torch.device("cpu"), 2, sent.append)
        build_student(study, shared, 0, torch.device("cpu"), report=reporter)
    finally:
        torch.set_num_threads(before)
    # 6 pruning steps + 4 recovery steps, a report every 2
    assert [r["step"] for r in sent] == [2, 4, 6, 8, 10]
    assert len(reporter.timings) == len(sent)
    gflops = [r["gflops"] for r in sent]
    changed = [i == 0 or gflops[i] != gflops[i - 1] for i in range(len(gflops))]
    assert [t["counted_cost"] for t in reporter.timings] == changed
    # the schedule shrinks the model while reporting, and recovery reuses the last count
    assert 1 < sum(changed) < len(sent)
