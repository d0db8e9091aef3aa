"""Search spaces and algorithms: typed ranges, reproducible sampling, seeds per configuration."""

from __future__ import annotations

import math

import pytest

from engine.config import ConfigError, load_study
from engine.search import ALGORITHMS, SeedRepeater, plan_search, sample_points, trial_configs
from engine.search_config import FloatRange, IntRange
from engine.trial import trial_seed

RANGES = (
    "search.space={pipeline.distill.temperature: {low: 1.0, high: 8.0, log: true}, "
    "pipeline.truncate.keep_layers: {int_low: 1, int_high: 6}, "
    "pipeline.truncate.strategy: [fisher, uniform]}"
)


def _problems(overrides: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_study("smoke", overrides)
    return e.value.problems


def test_registry_names_every_algorithm() -> None:
    assert set(ALGORITHMS.names()) == {"grid", "one_at_a_time", "random", "optuna", "optuna_mo"}


def test_ranges_parse_into_typed_specs() -> None:
    cfg = load_study("smoke", ["search.algorithm=random", RANGES])
    space = cfg.search.space
    assert space["pipeline.distill.temperature"] == FloatRange(low=1.0, high=8.0, log=True)
    assert space["pipeline.truncate.keep_layers"] == IntRange(int_low=1, int_high=6)
    assert space["pipeline.truncate.strategy"] == ["fisher", "uniform"]


def test_grid_rejects_a_range() -> None:
    (p,) = _problems([RANGES])
    assert "grid needs a list of values" in p and "pipeline.distill.temperature" in p


def test_bad_range_is_one_clear_error() -> None:
    (p,) = _problems(
        ["search.algorithm=random", "search.space={pipeline.distill.lr: {low: 0.1, high: 0.01}}"]
    )
    assert "low must be < high" in p
    (p,) = _problems(
        [
            "search.algorithm=random",
            "search.space={pipeline.distill.lr: {low: 0, high: 0.1, log: true}}",
        ]
    )
    assert "log: true needs low > 0" in p


def test_range_ends_are_validated_against_the_config_before_ray() -> None:
    # temperature must be > 0: the range's lower end makes an invalid study
    problems = _problems(
        [
            "search.algorithm=random",
            "search.space={pipeline.distill.temperature: {low: -1, high: 2}}",
        ]
    )
    assert any("search.space.pipeline.distill.temperature=-1.0" in p for p in problems)


def test_optuna_needs_scalar_categories() -> None:
    (p,) = _problems(
        [
            "search.algorithm=optuna",
            "search.space={pipeline.order: [[truncate], [truncate, distill]]}",
        ]
    )
    assert "optuna categorical values must be scalars" in p


def test_multi_objective_needs_two_objectives_and_a_scheduler_needs_reports() -> None:
    (p,) = _problems(
        ["search.algorithm=optuna_mo", "search.objectives=[{metric: gflops, mode: min}]"]
    )
    assert "at least two objectives" in p
    (p,) = _problems(["search.scheduler.name=asha"])
    assert "set report_every_steps" in p
    (p,) = _problems(["search.objectives=[{metric: accuracy, mode: max}]"])
    assert "search.objectives.0.metric" in p  # test accuracy is never a search objective


def test_random_points_are_seeded_typed_and_in_range() -> None:
    cfg = load_study("smoke", ["search.algorithm=random", "search.num_samples=200", RANGES])
    pts = sample_points(cfg)
    assert pts == sample_points(cfg)  # same seed, same points
    other = load_study("smoke", ["search.algorithm=random", "search.seed=1", RANGES])
    assert sample_points(other)[:5] != pts[:5]
    temps = [p["pipeline.distill.temperature"] for p in pts]
    layers = [p["pipeline.truncate.keep_layers"] for p in pts]
    assert all(1.0 <= t <= 8.0 for t in temps)
    assert all(isinstance(k, int) for k in layers) and set(layers) == {1, 2, 3, 4, 5, 6}
    # log-uniform: the median of log T sits near the middle of [log 1, log 8]
    logs = sorted(math.log(t) for t in temps)
    assert abs(logs[100] - math.log(8) / 2) < 0.25
    assert {p["pipeline.truncate.strategy"] for p in pts} == {"fisher", "uniform"}


def test_random_plan_runs_every_point_under_every_seed() -> None:
    cfg = load_study(
        "smoke", ["search.algorithm=random", "search.num_samples=3", "repeats=[0, 5]", RANGES]
    )
    plan = plan_search(cfg)
    assert plan.configs == 3 and plan.search_alg is None
    assert plan.param_space["values"]["grid_search"] == sample_points(cfg)
    assert plan.param_space["seed"]["grid_search"] == [0, 5]


def test_one_at_a_time_varies_one_key_from_the_study_settings() -> None:
    cfg = load_study("sensitivity")
    points = plan_search(cfg).param_space["values"]["grid_search"]
    extra = [dict(e) for e in cfg.search.extra]  # beside the knobs, as written, at the end
    assert extra, "the study has an extra arm, so the test covers knobs and extras together"
    knobs = points[1 : len(points) - len(extra)]
    assert points[0] == {}  # the study's own settings
    assert all(len(p) == 1 for p in knobs)
    assert [(k, v) for p in knobs for k, v in p.items()] == [
        (k, v) for k, vs in cfg.search.space.items() for v in vs
    ]
    assert points[len(points) - len(extra) :] == extra


def test_trial_seed_from_seed_or_repeat_index() -> None:
    assert trial_seed({"seed": 7}, (0, 1)) == 7
    assert trial_seed({"__trial_index__": 1}, (3, 9)) == 9
    assert trial_seed({}, (4,)) == 4


@pytest.mark.parametrize("multi", [False, True])
def test_seed_repeater_tells_optuna_the_mean_over_seeds(multi: bool) -> None:
    cfg = load_study(
        "smoke",
        [
            f"search.algorithm={'optuna_mo' if multi else 'optuna'}",
            "search.num_samples=2",
            "repeats=[0, 1, 2]",
            RANGES,
        ],
    )
    plan = plan_search(cfg)
    assert plan.num_samples == 6 and isinstance(plan.search_alg, SeedRepeater)
    rep = plan.search_alg
    assert rep.set_search_properties(None, None, plan.param_space)
    configs = [rep.suggest(f"t{i}") for i in range(3)]
    assert [c["__trial_index__"] for c in configs] == [0, 1, 2]
    assert all(c["values"] == configs[0]["values"] for c in configs)
    fourth = rep.suggest("t3")
    assert fourth["__trial_index__"] == 0  # a new suggestion starts the next group
    accs, flops = [0.5, 0.7, float("nan")], [2.0, 2.0, 2.0]
    for i, (a, g) in enumerate(zip(accs, flops, strict=True)):
        rep.on_trial_complete(f"t{i}", {"valid_accuracy": a, "gflops": g})
    study = rep.searcher._ot_study
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 1
    expected = [0.6, 2.0] if multi else [0.6]  # NaN-mean over the three seeds
    assert done[0].values == pytest.approx(expected)
    assert len(study.directions) == (2 if multi else 1)


def test_seed_repeater_state_survives_save_and_restore(tmp_path) -> None:
    overrides = ["search.algorithm=optuna_mo", "search.num_samples=3", "repeats=[0, 1]", RANGES]
    rep = plan_search(load_study("smoke", overrides)).search_alg
    rep.set_search_properties(None, None, plan_search(load_study("smoke", overrides)).param_space)
    first = [rep.suggest(f"t{i}") for i in range(3)]  # group t0 (t0, t1) and group t2 (t2)
    rep.on_trial_complete("t0", {"valid_accuracy": 0.4, "gflops": 1.0})
    rep.save(str(tmp_path / "state.pkl"))

    fresh = plan_search(load_study("smoke", overrides)).search_alg
    fresh.set_search_properties(None, None, plan_search(load_study("smoke", overrides)).param_space)
    fresh.restore(str(tmp_path / "state.pkl"))
    # t2's group has one seed left: the restored searcher hands out the same values, index 1
    nxt = fresh.suggest("t3")
    assert nxt["values"] == first[2]["values"] and nxt["__trial_index__"] == 1
    fresh.on_trial_complete("t1", {"valid_accuracy": 0.6, "gflops": 1.0})
    done = [t for t in fresh.searcher._ot_study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 1 and done[0].values == pytest.approx([0.5, 1.0])


EXTRA = (
    "search.extra=[{pipeline.order: [truncate, distill, quantize]}, "
    "{pipeline.order: [truncate, distill, prune], pipeline.prune.neuron_sparsity: 0.5}]"
)


def test_extra_configurations_follow_the_grid_points() -> None:
    cfg = load_study("smoke", ["search.space={pipeline.truncate.keep_layers: [1, 2]}", EXTRA])
    plan = plan_search(cfg)
    points = plan.param_space["values"]["grid_search"]
    assert points == [
        {"pipeline.truncate.keep_layers": 1},
        {"pipeline.truncate.keep_layers": 2},
        {"pipeline.order": ["truncate", "distill", "quantize"]},
        {"pipeline.order": ["truncate", "distill", "prune"], "pipeline.prune.neuron_sparsity": 0.5},
    ]
    assert plan.configs == 4
    oat = plan_search(load_study("sensitivity", [EXTRA])).param_space["values"]["grid_search"]
    assert oat[-2:] == points[-2:]


def test_extra_configurations_are_validated_before_ray() -> None:
    problems = _problems(
        [
            "search.extra=[{pipeline.order: [truncate, sharpen]}, {pipeline.nope: 1}, "
            "{pipeline.prune.neuron_sparsity: 1.5}]"
        ]
    )
    assert len(problems) == 3, problems
    assert "pipeline.order.1" in problems[0] and "[search.extra.0]" in problems[0]
    assert "search.extra.1.pipeline.nope: not a config path" in problems[1]
    assert "neuron_sparsity" in problems[2] and "[search.extra.2]" in problems[2]
    (p,) = _problems(["search.algorithm=optuna", RANGES, EXTRA])
    assert "extra configurations" in p and "optuna chooses its own" in p
    (p,) = _problems(["search.extra=[{}]"])
    assert "at least one {path: value}" in p


def test_grid_is_cartesian_product() -> None:
    cfg = load_study("ablation")
    grid = trial_configs(cfg)
    sizes = [len(v) for v in cfg.search.space.values()]
    assert len(sizes) >= 2 and len(grid) == math.prod(sizes)
    assert len({tuple(sorted(g.items())) for g in grid}) == len(grid)


# ---------------------------------------------- contract: every registered search algorithm

KNOBS = {"pipeline.truncate.keep_layers": [1, 2], "pipeline.distill.temperature": [1.0, 4.0, 8.0]}
CONTRACT_STUDY = [
    "search.space={pipeline.truncate.keep_layers: [1, 2], "
    "pipeline.distill.temperature: [1.0, 4.0, 8.0]}",
    "search.num_samples=3",
    "repeats=[0, 7]",
]
# configurations per algorithm on that study, counted by hand from each definition: the
# product 2 × 3; the centre plus each value alone 1 + 2 + 3; num_samples for the samplers
KNOWN_CONFIGS = {"grid": 6, "one_at_a_time": 6, "random": 3, "optuna": 3, "optuna_mo": 3}


def _grid_trials(space: object) -> list[dict]:
    """Every trial a Tune grid expands ``space`` into, by brute force over its
    ``{"grid_search": [...]}`` leaves (a leaf with another value is passed through)."""
    if isinstance(space, dict) and set(space) == {"grid_search"}:
        return list(space["grid_search"])
    if isinstance(space, dict):
        out: list[dict] = [{}]
        for key, sub in space.items():
            out = [{**o, key: v} for o in out for v in _grid_trials(sub)]
        return out
    return [space]


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_algorithm_plans_one_trial_per_configuration_and_seed(name: str) -> None:
    cfg = load_study("pareto", [f"search.algorithm={name}", *CONTRACT_STUDY])
    plan = ALGORITHMS.get(name)(cfg)
    assert plan.configs >= 1
    if name in KNOWN_CONFIGS:
        assert plan.configs == KNOWN_CONFIGS[name]
    if plan.search_alg is None:  # a grid: the trials are known before Tune runs
        trials = _grid_trials(plan.param_space) * plan.num_samples
        assert len(trials) == plan.configs * len(cfg.repeats)
        assert sorted({t["seed"] for t in trials}) == [0, 7]
        assert len({repr(sorted(t["values"].items())) + str(t["seed"]) for t in trials}) == len(
            trials
        )  # no configuration × seed twice
        for t in trials:
            for key, value in t["values"].items():
                assert value in KNOBS[key], (key, value)
        assert plan.param_space == ALGORITHMS.get(name)(cfg).param_space  # deterministic
    else:  # a searcher proposes: Tune runs num_samples trials, each configuration per seed
        assert plan.num_samples == plan.configs * len(cfg.repeats)
        assert set(plan.param_space["values"]) == set(KNOBS)


def test_an_unregistered_algorithm_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        load_study("pareto", ["search.algorithm=no_such_search"])


def test_an_unknown_algorithm_is_named_with_its_dotted_key_and_nearest_match() -> None:
    with pytest.raises(ConfigError) as e:
        load_study("smoke", ["search.algorithm=optuan"])
    (p,) = e.value.problems
    assert p.startswith("sweeps/smoke.yaml: search.algorithm: unknown search algorithm 'optuan'")
    assert "did you mean 'optuna'?" in p
    for name in ("grid", "one_at_a_time", "random", "optuna", "optuna_mo"):
        assert name in p


def test_every_declared_algorithm_has_a_plan_and_the_other_way_round() -> None:
    from engine.search_config import SEARCH_ALGORITHMS

    assert set(SEARCH_ALGORITHMS.names()) == set(ALGORITHMS.names())
