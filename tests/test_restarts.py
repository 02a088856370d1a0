"""The learner's restart budget and the resources a new learner asks for (no Ray)."""

from __future__ import annotations

from keisei_ray.config_loading import load_config
from keisei_ray.training.restarts import RestartBudget, learner_bundle


def test_the_budget_counts_restarts_within_the_window() -> None:
    budget = RestartBudget(limit=2, window_s=100.0)
    assert budget.take(0.0) and budget.take(10.0)
    assert not budget.take(50.0)  # a third within 100 s
    assert "restarted 2 time(s) in the last 100 s" in budget.refusal()
    assert "train.learner_max_restarts=2" in budget.refusal()
    assert budget.take(100.0)  # the first one has left the window
    assert not budget.take(105.0)
    assert budget.take(110.5) and budget.total == 4


def test_zero_restarts_refuses_at_once_with_today_s_message_and_minus_one_never() -> None:
    off = RestartBudget(limit=0, window_s=3600.0)
    assert not off.take(0.0) and off.refusal() == "" and off.total == 0
    unlimited = RestartBudget(limit=-1, window_s=1.0)
    assert all(unlimited.take(0.001 * k) for k in range(100))


def test_the_new_learner_asks_for_what_the_first_one_took() -> None:
    config = load_config(None, ["train.learner_cpus=2"])
    assert learner_bundle(config, {"num_gpus": 1, "resources": {"learner": 1.0}}) == {
        "learner": 1.0, "CPU": 2.0, "GPU": 1.0}
    assert learner_bundle(load_config(None, ["train.learner_cpus=0"]),
                          {"num_gpus": 0, "resources": None}) == {}
