"""Event bus: callbacks get events; failures are contained, counted, repeat offenders disabled."""

from __future__ import annotations

import logging

import pytest

from keisei_ray.events import (
    Callback,
    CallbackImportError,
    EventBus,
    GameStats,
    TrainEnd,
    load_callback,
)


class Recorder(Callback):
    def __init__(self) -> None:
        self.ends: list[TrainEnd] = []

    def on_train_end(self, event: TrainEnd) -> None:
        self.ends.append(event)


class Exploding(Callback):
    calls = 0

    def on_train_end(self, event: TrainEnd) -> None:
        self.calls += 1
        raise RuntimeError("boom")


def test_failing_callback_is_contained_and_disabled(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus(max_failures=3)
    bad, good = Exploding(), Recorder()
    bus.register(bad)
    bus.register(good)
    event = TrainEnd(timestep=1, version=1, reason="completed")
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            bus.emit(event)
    assert len(good.ends) == 5  # the good callback saw every event
    assert bad.calls == 3  # disabled after three failures in a row
    assert bus.errors == 3
    assert bad not in bus.callbacks and good in bus.callbacks
    assert "boom" in caplog.text  # the traceback is logged
    assert "disabled" in caplog.text


def test_success_resets_the_failure_streak() -> None:
    class Flaky(Callback):
        n = 0

        def on_train_end(self, event: TrainEnd) -> None:
            self.n += 1
            if self.n % 2:
                raise ValueError("odd")

    bus = EventBus(max_failures=2)
    flaky = Flaky()
    bus.register(flaky)
    for _ in range(6):
        bus.emit(TrainEnd(timestep=0, version=0, reason="completed"))
    assert flaky in bus.callbacks
    assert bus.errors == 3


def test_load_callback_from_spec() -> None:
    cb = load_callback("tests.test_events:Recorder")
    assert isinstance(cb, Recorder)
    with pytest.raises(CallbackImportError, match=r"expected .package\.module:ClassName."):
        load_callback("nonsense")
    with pytest.raises(CallbackImportError, match="cannot import"):
        load_callback("no_such_module_xyz:Thing")
    with pytest.raises(CallbackImportError, match="has no"):
        load_callback("tests.test_events:Missing")
    with pytest.raises(CallbackImportError, match=r"is not a keisei_ray\.events\.Callback"):
        load_callback("tests.test_events:GameStats")


def test_game_stats_add_and_shares() -> None:
    a = GameStats(games=2, black_wins=1, white_wins=0, draws=1, cap_draws=0, total_plies=100,
                  reasons={"checkmate": 1, "sennichite": 1})
    b = GameStats(games=2, black_wins=0, white_wins=1, draws=0, cap_draws=1, total_plies=300,
                  reasons={"checkmate": 1, "max_moves": 1})
    c = a + b
    assert c.games == 4 and c.total_plies == 400 and c.mean_length == 100
    assert c.reasons == {"checkmate": 2, "sennichite": 1, "max_moves": 1}
    shares = c.shares()
    assert shares["win_share"] == 0.5 and shares["cap_draw_share"] == 0.25
