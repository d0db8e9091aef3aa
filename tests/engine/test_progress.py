"""engine.progress: plain progress lines off a TTY, a tqdm bar on one, the sweep's line."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

from engine.progress import Phase, ProgressTable


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_one_per_step_pct() -> None:
    out = io.StringIO()
    phase = Phase("teacher", total=1000, unit="steps", stream=out, step_pct=10, every_s=1e9)
    for _ in range(1000):
        phase.update()
    phase.close("done")
    lines = out.getvalue().splitlines()
    # by the rule: a line when the work first reaches each further 10 %, then the summary
    pcts = [int(re.match(r"\[teacher\]\s+(\d+)%", line).group(1)) for line in lines[:-1]]
    assert pcts == list(range(10, 101, 10))
    assert re.match(r"\[teacher\]\s+100% 1000/1000 steps \[", lines[-2])
    assert lines[-1] == "[teacher] done"
    assert "\r" not in out.getvalue()


def test_plain_lines_every_s_when_slow() -> None:
    out = io.StringIO()
    phase = Phase("x", total=1000, stream=out, step_pct=50, every_s=0.0)
    for _ in range(3):
        phase.update()
    assert len(out.getvalue().splitlines()) == 3  # every_s 0: each update is due


def test_tty_gets_a_bar() -> None:
    out = _Tty()
    phase = Phase("importance", total=4, unit="batch×method", stream=out)
    for _ in range(4):
        phase.update()
    phase.close()
    text = out.getvalue()
    assert "\r" in text and "4/4" in text and "100%" in text


def test_sweep_line_counts_trials_and_best() -> None:
    out = io.StringIO()
    table = ProgressTable([("valid_accuracy", "max")], ["k"], total=3, stream=out)
    table.setup()
    trials = [SimpleNamespace(trial_id=t, config={"values": {"k": i}}) for i, t in
              enumerate("abc")]  # fmt: skip
    for t in trials:
        table.on_trial_start(0, trials, t)
    for t, acc in zip(trials, (0.5, 0.7, 0.9), strict=True):
        table.on_trial_result(0, trials, t, {"valid_accuracy": acc, "status": "ok"})
    table.on_trial_complete(0, trials, trials[0])
    table.on_trial_complete(0, trials, trials[1])
    table.on_trial_error(0, trials, trials[2])
    lines = out.getvalue().splitlines()
    assert re.match(r"\[progress\]\s+33% 1/3 trials .*2 running; best valid_accuracy \(max\): 0.5 by a",
                    lines[0])  # fmt: skip
    # c's 0.9 came from a trial that then failed: the best is over finished (ok) trials
    assert re.match(r"\[progress\]\s+100% 3/3 trials .*1 failed, 2 ok; best valid_accuracy "
                    r"\(max\): 0.7 by b", lines[-1])  # fmt: skip
