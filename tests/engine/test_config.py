"""Study-file validation: every shipped study loads, and each error path names file + key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engine.config import (
    SWEEPS_DIR,
    ConfigError,
    apply_overrides,
    either_or_partners,
    load_study,
    parse_override,
    with_values,
)
from engine.search import plan_search, trial_configs
from tests.conftest import sweep_in_process

REPO = Path(__file__).resolve().parents[2]
STUDIES = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", STUDIES)
def test_every_shipped_study_validates(name: str) -> None:
    cfg = load_study(name)
    assert cfg.name == name
    assert cfg.description.strip()
    plan = plan_search(cfg)  # builds the searcher/grid without Ray running
    assert plan.configs >= 1 and plan.num_samples >= 1


def test_default_studies_are_shipped() -> None:
    assert {"smoke", "ablation", "sensitivity", "pareto"} <= set(STUDIES)


def test_pareto_study_is_multi_objective_with_mo_asha() -> None:
    cfg = load_study("pareto")
    assert cfg.search.algorithm == "optuna_mo" and cfg.search.scheduler.name == "mo_asha"
    assert [o.mode for o in cfg.search.objectives] == ["max", "min"]


def _problems(overrides: list[str], study: str = "smoke") -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_study(study, overrides)
    return e.value.problems


def test_unknown_key_names_file_and_dotted_path() -> None:
    (p,) = _problems(["pipeline.distill.temprature=3"])
    assert p.startswith("sweeps/smoke.yaml: pipeline.distill.temprature: unknown key")


def test_wrong_type_names_key_and_value() -> None:
    (p,) = _problems(["pipeline.distill.temperature=hot"])
    assert "pipeline.distill.temperature" in p and "'hot'" in p


def test_out_of_range_value_says_what_is_allowed() -> None:
    (p,) = _problems(["data.max_length=4"])
    assert "data.max_length" in p and "greater than or equal to 8" in p and "(got 4)" in p


@pytest.mark.parametrize(
    "repeats,twice", [("[0, 0]", "0"), ("[2, 0, 1, 2, 0]", "0, 2"), ("[3, 3, 3]", "3")]
)
def test_a_seed_given_twice_is_an_error(repeats: str, twice: str) -> None:
    """Issue 33: ``repeats=[0,0]`` ran duplicate trials and reported n_seeds=2 with a
    zero-width interval."""
    (p,) = _problems([f"repeats={repeats}"])
    assert p.startswith(f"sweeps/smoke.yaml: repeats: seed {twice} appears more than once")
    assert "Value error" not in p
    assert load_study("smoke", ["repeats=[2, 0, 1]"]).repeats == (2, 0, 1)


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "x y", "/abs", "a\\b", ""])
def test_a_name_that_is_not_one_plain_folder_is_an_error(name: str) -> None:
    """Issue 33: ``name=../../x`` put the run directory outside ``reports/``."""
    (p,) = _problems([f"name={name!r}"])
    assert p.startswith("sweeps/smoke.yaml: name: ") and "is not a plain name" in p
    for ok in ("smoke", "cross-domain-rec-reverse", "my_study.v2", "A1"):
        assert load_study("smoke", [f"name={ok}"]).name == ok


def test_errors_are_collected_together() -> None:
    problems = _problems(["data.max_length=4", "teacher.lr=-1", "bogus=1"])
    keys = " ".join(problems)
    assert len(problems) == 3
    assert "data.max_length" in keys and "teacher.lr" in keys and "bogus" in keys


def test_keep_layers_and_ratio_are_exclusive() -> None:
    # both in one override set (one alone replaces the study's other: see the tests below)
    (p,) = _problems(["pipeline.truncate.keep_ratio=0.5", "pipeline.truncate.keep_layers=2"])
    assert "exactly one of keep_layers and keep_ratio" in p
    # neither: an override of null clears the study's own, and nothing replaces it
    (p,) = _problems(["pipeline.truncate.keep_layers=null"])  # smoke sets keep_layers
    assert "exactly one of keep_layers and keep_ratio" in p


def test_an_override_of_one_either_or_member_replaces_the_other() -> None:
    """``keep_layers`` / ``keep_ratio`` is an either/or pair: the ablation study sets
    keep_ratio, smoke keep_layers; a CLI override of the other member replaces it."""
    cfg = load_study("ablation", ["pipeline.truncate.keep_layers=3"])
    assert (cfg.pipeline.truncate.keep_layers, cfg.pipeline.truncate.keep_ratio) == (3, None)
    cfg = load_study("smoke", ["pipeline.truncate.keep_ratio=0.5"])
    assert (cfg.pipeline.truncate.keep_layers, cfg.pipeline.truncate.keep_ratio) == (None, 0.5)
    assert either_or_partners("pipeline.truncate.keep_layers") == ["pipeline.truncate.keep_ratio"]
    assert either_or_partners("pipeline.truncate.strategy") == []
    assert either_or_partners("pipeline.distill.temperature") == []


def test_a_search_over_one_either_or_member_replaces_the_other() -> None:
    """A search space or an extra point over keep_layers on a study that sets keep_ratio
    (dpq), and the reverse (smoke sets keep_layers): every trial gets the searched member and
    the other cleared."""
    space = "search.space={pipeline.truncate.keep_layers: [2, 3]}"
    cfg = load_study("dpq", [space])  # validated point by point before any trial runs
    trials = [with_values(cfg, point) for point in trial_configs(cfg)]
    got = [(t.pipeline.truncate.keep_layers, t.pipeline.truncate.keep_ratio) for t in trials]
    assert got == [(2, None), (3, None)]
    cfg = load_study("smoke", ["search.space={pipeline.truncate.keep_ratio: [0.25, 0.5]}"])
    trials = [with_values(cfg, point) for point in trial_configs(cfg)]
    got = [(t.pipeline.truncate.keep_layers, t.pipeline.truncate.keep_ratio) for t in trials]
    assert got == [(None, 0.25), (None, 0.5)]
    extra = "search.extra=[{pipeline.truncate.keep_ratio: 0.5}]"
    cfg = load_study("smoke", ["search.algorithm=grid", extra])
    t = with_values(cfg, dict(cfg.search.extra[0]))
    assert (t.pipeline.truncate.keep_layers, t.pipeline.truncate.keep_ratio) == (None, 0.5)


def test_searching_both_either_or_members_is_an_error_before_running() -> None:
    both = "search.space={pipeline.truncate.keep_layers: [2], pipeline.truncate.keep_ratio: [0.5]}"
    (p,) = _problems([both])
    assert p.startswith("sweeps/smoke.yaml: search.space.pipeline.truncate.keep_layers:")
    assert "search.space.pipeline.truncate.keep_ratio" in p and "either/or" in p
    extra = "search.extra=[{pipeline.truncate.keep_layers: 2, pipeline.truncate.keep_ratio: 0.5}]"
    (p,) = _problems(["search.algorithm=grid", extra])
    assert "exactly one of keep_layers and keep_ratio" in p and "[search.extra.0]" in p


def test_apply_overrides_clears_the_other_member_by_the_schema() -> None:
    raw = {"pipeline": {"truncate": {"keep_ratio": 0.5, "strategy": "uniform"}}}
    out = apply_overrides(raw, {"pipeline.truncate.keep_layers": 3})
    assert out == {"pipeline": {"truncate": {"keep_ratio": None, "strategy": "uniform",
                                             "keep_layers": 3}}}  # fmt: skip
    assert raw["pipeline"]["truncate"]["keep_ratio"] == 0.5  # a copy
    both = {"pipeline.truncate.keep_layers": 3, "pipeline.truncate.keep_ratio": 0.25}
    assert apply_overrides(raw, both)["pipeline"]["truncate"] == {
        "keep_ratio": 0.25, "strategy": "uniform", "keep_layers": 3
    }  # fmt: skip


def test_unknown_stage_lists_known_stages() -> None:
    (p,) = _problems(["pipeline.order=[truncate, distil]"])
    assert "pipeline.order.1" in p and "did you mean 'distill'" in p and "truncate" in p


def test_unknown_strategy_lists_allowed() -> None:
    (p,) = _problems(["pipeline.truncate.strategy=fishr"])
    assert "pipeline.truncate.strategy" in p and "uniform" in p and "fisher" in p


def test_unknown_importance_method() -> None:
    (p,) = _problems(["importance.methods=[fisher, fishy]"])
    assert "importance.methods.1" in p and "unknown importance method 'fishy'" in p


def test_bad_search_value_is_caught_before_running() -> None:
    problems = _problems(["search.space={pipeline.distill.temperature: [2.0, -1]}"])
    assert any("search.space.pipeline.distill.temperature=-1" in p for p in problems)


def test_search_key_must_be_a_config_path() -> None:
    (p,) = _problems(["search.space={pipeline.distill.temp: [1, 2]}"])
    assert "search.space.pipeline.distill.temp: not a config path" in p


def test_overrides_parse_as_yaml() -> None:
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=[0, 1]") == ("a", [0, 1])
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=fisher") == ("a", "fisher")
    with pytest.raises(ConfigError):
        parse_override("no_equals_sign")


def test_latency_objective_needs_saved_models() -> None:
    """Latency is timed on the saved students after the sweep: without them there is none to
    steer a search or a report by (an in-trial figure is load, not the model)."""
    objectives = "search.objectives=[{metric: valid_accuracy}, {metric: latency_ms_p50, mode: min}]"
    (p,) = _problems(["measure.save_models=false", objectives, "report.cost_metric=latency_ms_p50"])
    assert p.startswith("sweeps/smoke.yaml: measure.save_models: false leaves no saved model")
    assert "search.objectives.1, report.cost_metric asks for latency_ms_p50" in p
    load_study("smoke", ["measure.save_models=false"])  # fine without a latency objective
    load_study("smoke", [objectives])  # and with saved models


def test_override_precedence_cli_over_yaml_over_default() -> None:
    cfg = load_study("smoke", ["pipeline.distill.temperature=4", "repeats=[0, 1]"])
    assert cfg.pipeline.distill.temperature == 4.0  # CLI beats YAML's 2.0
    assert cfg.repeats == (0, 1)
    assert cfg.pipeline.distill.weight_decay == 0.01  # default, absent from smoke.yaml
    assert apply_overrides({"a": {"b": 1}}, {"a.c": 2}) == {"a": {"b": 1, "c": 2}}


def test_config_is_frozen() -> None:
    cfg = load_study("smoke")
    with pytest.raises(Exception):  # noqa: B017  (pydantic raises ValidationError)
        cfg.pipeline.distill.temperature = 9.0  # type: ignore[misc]


def test_unreadable_yaml_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndescription: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_study(str(bad))
    (p,) = e.value.problems
    assert "not valid YAML" in p and "bad.yaml" in p


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI's entry point in this process; it also checks that no Ray started."""
    return sweep_in_process(*args)


def test_cli_rejects_bad_input_with_exit_2_before_ray() -> None:
    r = _cli("smoke", "pipeline.distill.temperature=-1")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        "error: sweeps/smoke.yaml: pipeline.distill.temperature: "
        "Input should be greater than 0 (got -1)"
    )


def test_cli_unknown_study_suggests_nearest() -> None:
    r = _cli("smok")
    assert r.returncode == 2
    assert "unknown study 'smok'; did you mean 'smoke'?" in r.stderr


def test_cli_list_and_help() -> None:
    r = _cli("--list")
    assert r.returncode == 0
    for name in STUDIES:
        assert name in r.stdout
    h = _cli("--help")
    assert h.returncode == 0 and "--address" in h.stdout and "--resume" in h.stdout


def test_a_config_error_survives_pickling_with_its_lines_intact() -> None:
    # what a worker process or a Ray task sends back when a trial's values are invalid
    import pickle

    with pytest.raises(ConfigError) as e:
        with_values(load_study("smoke"), {"pipeline.prune.recovery_steps": -42})
    back = pickle.loads(pickle.dumps(e.value))
    assert back.problems == e.value.problems
    assert str(back) == str(e.value)
    assert str(back).startswith("trial: pipeline.prune.recovery_steps:")
