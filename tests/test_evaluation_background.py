"""Background evaluation on a real local Ray: it never blocks training, rates every policy in one
Elo store, writes records, emits EvaluationDone, and keeps its state for checkpoints."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.evaluation import Contestant, EvaluationActorImpl, MatchResult
from keisei_ray.arena.background import BackgroundEvaluation
from keisei_ray.arena.elo import ANCHOR
from keisei_ray.arena.evaluation import run_match
from keisei_ray.config import Config, ConfigError
from keisei_ray.config_loading import load_config
from keisei_ray.events import Callback, EvaluationDone, EventBus, TrainStart, UpdateDone
from keisei_ray.training.driver import Trainer

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]  # Ray training runs


def small_config(tmp_path: Path, *extra: str) -> Config:
    return load_config(None, [
        "model.size=tiny", "env.max_moves=32", "train.games_per_worker=4",
        "train.rollout_steps=16", "train.num_workers=1", "train.learner_cpus=0",
        "train.total_timesteps=400", "ppo.epochs=1", "ppo.minibatch_size=64",
        f"train.runs_dir={tmp_path}", "evaluation.interval_timesteps=100",
        "evaluation.games=2", "evaluation.records=1", "evaluation.opponents=[random]",
        # The machine running the tests may be busy: an idle-class actor could starve.
        "evaluation.priority=normal", *extra])


class Recorder(Callback):
    def __init__(self) -> None:
        self.updates = 0
        self.log: list[tuple[str, int, Any]] = []  # (kind, updates so far, event)

    def on_update_done(self, event: UpdateDone) -> None:
        self.updates += 1
        self.log.append(("update", self.updates, event))

    def on_evaluation_done(self, event: EvaluationDone) -> None:
        self.log.append(("evaluation", self.updates, event))

    @property
    def evaluations(self) -> list[EvaluationDone]:
        return [e for kind, _, e in self.log if kind == "evaluation"]


def run(config: Config, run_dir: Path, *callbacks: Callback) -> None:
    run_dir.mkdir()
    result = Trainer(config, run_dir, callbacks=list(callbacks)).run()
    assert result.reason == "completed"
    assert result.callback_errors == 0


def test_background_evaluation_rates_policies_and_writes_records(tmp_path: Path) -> None:
    config = small_config(tmp_path)
    run_dir = tmp_path / "run"
    evaluation = BackgroundEvaluation(config, run_dir)
    rec = Recorder()
    run(config, run_dir, evaluation, rec)
    events = rec.evaluations
    assert events, "no evaluation finished"
    for event in events:
        assert event.games == 2 and event.wins + event.draws + event.losses == 2
        assert event.timestep % 100 < 64  # launched at the update that crossed a multiple
        assert event.elo is not None and event.elo_ci is not None
        assert event.details["name"] == f"ts-{event.timestep}"
    assert events[0].opponent == "random"
    records = [Path(p) for e in events for p in e.details["records"]]
    assert {p.suffix for p in records} == {".kif", ".svg"}
    assert all(p.is_file() and p.stat().st_size > 100 for p in records)
    assert records[0].read_text(encoding="utf-8").startswith("手合割：平手")
    assert "<svg" in records[1].read_text(encoding="utf-8")
    saved = json.loads((run_dir / "evaluation" / "elo.json").read_text(encoding="utf-8"))
    assert [row["name"] for row in saved["history"]] == [r["name"] for r in evaluation.history]
    players = evaluation.elo.players
    assert players[0] == ANCHOR and all(f"ts-{e.timestep}" in players for e in events)
    assert evaluation._actor is None  # closed at the end of training


def test_a_completed_run_ends_with_an_evaluation_of_its_final_policy(tmp_path: Path) -> None:
    # No multiple of the interval is crossed: the only evaluation is the final policy's.
    config = small_config(tmp_path, "evaluation.interval_timesteps=100000")
    rec = Recorder()
    run(config, tmp_path / "final", BackgroundEvaluation(config, tmp_path / "final"), rec)
    last = [event for kind, _, event in rec.log if kind == "update"][-1]
    assert [(e.timestep, e.version) for e in rec.evaluations] == [(last.timestep, last.version)]


class GatedEvaluator(EvaluationActorImpl):
    """An evaluation actor that holds every evaluation until the test opens the gate."""

    def __init__(self, config: Config, gate: Any) -> None:
        super().__init__(config)
        self.gate = gate

    def evaluate(self, policy: Contestant, opponents: list[Contestant], games: int,
                 seed: int) -> list[MatchResult]:
        while not ray.get(self.gate.is_open.remote()):
            time.sleep(0.02)
        return super().evaluate(policy, opponents, games, seed)


@ray.remote(num_cpus=0)
class Gate:
    def __init__(self) -> None:
        self.opened = False

    def open(self) -> None:
        self.opened = True

    def is_open(self) -> bool:
        return self.opened


def test_training_goes_on_while_an_evaluation_runs(tmp_path: Path) -> None:
    gate = Gate.remote()  # type: ignore[attr-defined]
    config = small_config(tmp_path, "train.total_timesteps=640")

    def factory(cfg: Config) -> Any:
        return ray.remote(GatedEvaluator).options(num_cpus=0).remote(cfg, gate)

    evaluation = BackgroundEvaluation(config, tmp_path / "gated", actor_factory=factory)
    launched_at: list[int] = []

    class OpenLater(Recorder):
        def on_update_done(self, event: UpdateDone) -> None:
            super().on_update_done(event)
            if evaluation._running is not None and not launched_at:
                launched_at.append(self.updates)
            if launched_at and self.updates == launched_at[0] + 4:
                ray.get(gate.open.remote())

    rec = OpenLater()
    run(config, tmp_path / "gated", evaluation, rec)
    assert launched_at, "no evaluation was launched"
    # Four updates completed while the evaluation was held: training did not wait for it.
    first_result = next(n for kind, n, _ in rec.log if kind == "evaluation")
    assert first_result >= launched_at[0] + 4
    # While it was held, later evaluations came due: the newest waited, older ones were skipped.
    assert evaluation.skipped >= 1
    assert len({e.timestep for e in rec.evaluations}) >= 2


@ray.remote(num_cpus=0)
class ScriptedEvaluator:
    """Answers every evaluation at once with the same score, and remembers who played."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def evaluate(self, policy: Contestant, opponents: list[Contestant], games: int,
                 seed: int) -> list[MatchResult]:
        self.calls.append((policy.name, [o.name for o in opponents]))
        return [MatchResult(policy.name, o.name, wins=2, draws=1, losses=1) for o in opponents]

    def seen(self) -> list[tuple[str, list[str]]]:
        return self.calls


def test_state_round_trip_and_resume_interval(tmp_path: Path) -> None:
    config = small_config(tmp_path, "evaluation.interval_timesteps=1000")
    actors: list[Any] = []

    def factory(cfg: Config) -> Any:
        actors.append(ScriptedEvaluator.remote())  # type: ignore[attr-defined]
        return actors[-1]

    def seen() -> list[tuple[str, list[str]]]:
        return [call for actor in actors for call in ray.get(actor.seen.remote())]

    weights = [ray.put({})]

    def update(cb: BackgroundEvaluation, timestep: int) -> None:
        cb.on_update_done(UpdateDone(timestep, 1, 1, {}, None, None, 0, 1, 0.0, 0,  # type: ignore[arg-type]
                                     0.0, weights=weights))

    bus = EventBus()
    rec = Recorder()
    bus.register(rec)
    source = BackgroundEvaluation(config, tmp_path / "a", actor_factory=factory)
    source.on_train_start(TrainStart(tmp_path / "a", config, 0, 0, False, bus=bus))
    update(source, 900)
    assert source._running is None
    update(source, 1100)  # crosses 1000
    assert source.poll(timeout_s=60)
    assert seen() == [("ts-1100", ["random"])]
    assert source.elo.rating("ts-1100").games == 4
    state = json.loads(json.dumps(source.state_dict()))

    resumed = BackgroundEvaluation(config, tmp_path / "b", actor_factory=factory)
    resumed.load_state_dict(state)
    resumed.on_train_start(TrainStart(tmp_path / "b", config, 1100, 1, True))
    assert resumed.elo.rating("ts-1100") == source.elo.rating("ts-1100")
    update(resumed, 1900)  # same interval as the last evaluation: not due
    assert resumed._running is None
    update(resumed, 2050)
    assert resumed.poll(timeout_s=60)
    # The resumed run holds no earlier weights: it plays the fixed opponents only ...
    assert seen()[-1] == ("ts-2050", ["random"])
    # ... while the first one still holds ts-1100's weights and plays it too.
    update(source, 2100)
    assert source.poll(timeout_s=60)
    assert ("ts-2100", ["random", "ts-1100"]) in seen()
    assert source.elo.rating("ts-2100").games == 8
    # One event per match; the earlier policy is reported as "previous".
    events = [(e.timestep, e.opponent, e.details["opponent_name"]) for e in rec.evaluations]
    assert events == [(1100, "random", "random"), (2100, "random", "random"),
                      (2100, "previous", "ts-1100")]
    assert rec.evaluations[1].elo == rec.evaluations[2].elo == source.elo.rating("ts-2100").elo
    resumed.close()
    source.close()
    with pytest.raises(ValueError, match="last_bucket must be an integer"):
        resumed.load_state_dict({**state, "last_bucket": "x"})


@ray.remote(num_cpus=0)
class ShapingRecorder:
    """Answers at once and writes down (to a file: the actor is killed when training ends) the
    shaping each contestant's values are read with."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def evaluate(self, policy: Contestant, opponents: list[Contestant], games: int,
                 seed: int) -> list[MatchResult]:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps([int(policy.name.removeprefix("ts-")), policy.value_material,
                                  [(o.name, o.value_material) for o in opponents]]) + "\n")
        return [MatchResult(policy.name, o.name, wins=1, draws=0, losses=1) for o in opponents]


def test_evaluated_policies_carry_the_shaping_their_value_head_learnt(tmp_path: Path) -> None:
    # A searching evaluator reads values with it (docs/search.md): the driver's shaping
    # weight at each update, annealed here, must reach the policy and, later, "previous".
    config = small_config(tmp_path, "reward.material=0.05", "reward.material_anneal_share=0.5",
                          "evaluation.final_wait_s=30")
    calls_file = tmp_path / "calls.jsonl"

    def factory(cfg: Config) -> Any:
        return ShapingRecorder.remote(calls_file)  # type: ignore[attr-defined]

    run(config, tmp_path / "run", BackgroundEvaluation(config, tmp_path / "run",
                                                       actor_factory=factory))
    calls = [json.loads(line) for line in calls_file.read_text(encoding="utf-8").splitlines()]
    assert len(calls) >= 2
    shaping = {}
    for timestep, value_material, _ in calls:
        shaping[f"ts-{timestep}"] = value_material
        assert value_material == pytest.approx(config.reward.weight_at(timestep / 400))
    assert calls[0][1] > 0.0  # early in the anneal
    previous = [o for _, _, opponents in calls for o in opponents if o[0] != "random"]
    assert previous and all(value == shaping[name] for name, value in previous)


@ray.remote(num_cpus=0)
class BrokenEvaluator:
    def evaluate(self, policy: Contestant, opponents: list[Contestant], games: int,
                 seed: int) -> list[MatchResult]:
        raise RuntimeError("evaluation blew up")


def test_a_failed_evaluation_is_logged_and_the_next_one_gets_a_new_actor(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = small_config(tmp_path, "evaluation.interval_timesteps=100")
    made: list[Any] = []

    def factory(cfg: Config) -> Any:
        made.append(BrokenEvaluator.remote())  # type: ignore[attr-defined]
        return made[-1]

    evaluation = BackgroundEvaluation(config, tmp_path, actor_factory=factory)
    evaluation.on_train_start(TrainStart(tmp_path, config, 0, 0, False))
    weights = [ray.put({})]
    for timestep in (150, 250):
        evaluation.on_update_done(UpdateDone(timestep, 1, 1, {}, None, None, 0, 1, 0.0,  # type: ignore[arg-type]
                                             0, 0.0, weights=weights))
        assert evaluation.poll(timeout_s=60)
    assert evaluation.failed == 2 and len(made) == 2 and evaluation._actor is None
    assert "evaluation of ts-150 failed" in caplog.text and "evaluation blew up" in caplog.text
    assert evaluation.history == [] and evaluation.elo.games_of("ts-150") == 0


def test_bad_opponent_file_fails_before_training(tmp_path: Path) -> None:
    config = small_config(tmp_path, f"evaluation.opponents=[random, {tmp_path}/nope.pt]")
    with pytest.raises(ConfigError, match=r"evaluation.opponents: player .*nope.pt': not found"):
        BackgroundEvaluation(config, tmp_path)
    typo = small_config(tmp_path, "evaluation.opponents=[random, heurstic]")
    with pytest.raises(ConfigError, match=r"did you mean 'heuristic'\?$"):
        BackgroundEvaluation(typo, tmp_path)


def test_a_match_split_over_evaluation_actors(tmp_path: Path) -> None:
    config = small_config(tmp_path, "env.max_moves=200")
    heuristic, random_ = Contestant.baseline("heuristic"), Contestant.baseline("random")
    split = run_match(config, heuristic, random_, 7, workers=2, seed=3, records=2)
    assert split.games == 7
    assert sum(split.as_black) == 4 and sum(split.as_white) == 3  # games 0, 2, 4, 6 as Black
    assert len(split.records) == 2 and split.records[0].black == "heuristic"
    assert split.wins >= 6
    # The same games as one process playing them in the same two blocks.
    first = run_match(config, heuristic, random_, 4, seed=3, records=2)
    assert first.records == split.records
    # Records of every game, from both actors (the gauntlet leaves failed games out by them).
    every = run_match(config, heuristic, random_, 7, workers=2, seed=3, records=7)
    assert len(every.records) == 7
    assert [r.black for r in every.records] == ["heuristic", "random"] * 3 + ["heuristic"]
