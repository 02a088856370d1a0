"""The checkpoint callback: snapshots at a consistent cut, written by a background thread,
pruned to the last `checkpoint.keep_last` plus the best."""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keisei_ray.config import Config
from keisei_ray.events import (
    Callback,
    CheckpointSaved,
    EvaluationDone,
    EventBus,
    LearnerLost,
    LearnerRestarted,
    TrainEnd,
    TrainStart,
    UpdateDone,
)
from keisei_ray.files import make_dir, write_atomic
from keisei_ray.store.checkpoint import (
    _NAME,
    BEST_FILE,
    CHECKPOINTS,
    CheckpointError,
    RunSnapshot,
    _json_bytes,
    list_checkpoints,
    run_id_of,
    verify_checkpoint,
    write_checkpoint,
)
from keisei_ray.text import signed

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the callback


@dataclass(frozen=True)
class _Saved:
    path: Path
    timestep: int
    version: int
    reason: str
    seconds: float


class _Writer:
    """One background thread that writes checkpoints and deletes old ones, in order."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[Any] = queue.Queue()
        self.done: queue.Queue[_Saved] = queue.Queue()
        self.busy = 0  # jobs submitted and not finished (read on the driver thread)
        self.failures = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="checkpoint-writer",
                                        daemon=True)
        self._thread.start()

    def submit(self, job: Any) -> None:
        with self._lock:
            self.busy += 1
        self.jobs.put(job)

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                result = job()
                if isinstance(result, _Saved):
                    self.done.put(result)
            except Exception:
                # Logged, counted, and training goes on: the previous checkpoint stays valid.
                self.failures += 1
                log.exception("checkpoint writer: a job failed")
            finally:
                with self._lock:
                    self.busy -= 1

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until every submitted job is finished; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.busy:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        self.jobs.put(None)
        self._thread.join()


class CheckpointCallback(Callback):
    """Saves checkpoints on the event bus: every `checkpoint.interval_timesteps`, at the end and
    on interrupt; keeps the last K and the best by evaluation; emits `CheckpointSaved`.

    The save itself costs the driver only the snapshot fetch (`stall_s`): files are written,
    hashed and fsync'ed by a background thread. Its own state (evaluation merits, the best
    checkpoint) travels in the checkpoints through the `state_key` protocol.
    """

    state_key = "checkpoint"

    def __init__(self, config: Config) -> None:
        self.settings = config.checkpoint
        self.folder: Path | None = None
        self.run_id = ""
        self.bus: EventBus | None = None
        self.next_due: int | None = None
        self.last_timestep: int | None = None  # of the newest checkpoint submitted
        self.merits: dict[int, tuple[int, float]] = {}  # version -> (rated, Elo or score)
        self.best: str | None = None  # name of the best checkpoint
        self.saved: dict[str, tuple[int, int]] = {}  # name -> (timestep, version), on disk
        self.measured_since_save = False  # an evaluation finished after the newest save
        self.stall_s: list[float] = []  # driver-side seconds per checkpoint (snapshot fetch)
        self.save_s: list[float] = []  # writer-thread seconds per checkpoint
        self._writer: _Writer | None = None

    # ---------------------------------------------------------------- state protocol
    def state_dict(self) -> dict[str, Any]:
        return {"merits": {str(v): list(m) for v, m in self.merits.items()}, "best": self.best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.merits = {int(v): (int(m[0]), float(m[1])) for v, m in state["merits"].items()}
        self.best = state.get("best")

    # ---------------------------------------------------------------- events
    def on_train_start(self, event: TrainStart) -> None:
        self.folder = Path(event.run_dir) / CHECKPOINTS
        make_dir(self.folder)
        self.run_id = run_id_of(event.run_dir, create=True)
        self.bus = event.bus
        for stale in self.folder.glob(".tmp-ckpt-*"):  # a save killed half-way
            log.info("removing the unfinished checkpoint %s", stale.name)
            shutil.rmtree(stale, ignore_errors=True)
        self.saved = {}
        for path in list_checkpoints(event.run_dir):
            timestep = int(_NAME.match(path.name).group(1))  # type: ignore[union-attr]
            if event.resumed and timestep > event.timestep:
                # Written after the checkpoint this run resumed from: a future that is gone.
                aside = path.with_name(f"{path.name}.abandoned-{int(time.time())}")
                log.warning("%s is newer than the resumed timestep %d; renamed to %s",
                            path.name, event.timestep, aside.name)
                path.rename(aside)
                continue
            try:
                info = verify_checkpoint(path, run_id=self.run_id, hashes=False)
            except CheckpointError as exc:
                log.warning("%s (kept aside: not counted among the last %d)", exc,
                            self.settings.keep_last)
                continue
            self.saved[path.name] = (info.timestep, info.version)
        if event.resumed:
            self._restore_best()
        self.last_timestep = event.timestep if event.resumed else None
        interval = self.settings.interval_timesteps
        self.next_due = None if interval is None else (event.timestep // interval + 1) * interval
        self._writer = _Writer()

    def on_update_done(self, event: UpdateDone) -> None:
        self._poll()
        if self.next_due is None or event.timestep < self.next_due or event.snapshot is None:
            return
        interval = self.settings.interval_timesteps
        assert interval is not None
        self.next_due = (event.timestep // interval + 1) * interval
        self._save(event.snapshot, event.timestep, "interval")

    def on_learner_lost(self, event: LearnerLost) -> None:
        # The driver restores the newest good checkpoint next: finish the ones in the writer
        # (one whose snapshot needs the lost learner fails, and is logged).
        if self._writer is not None:
            self._writer.wait()
            self._poll()

    def on_learner_restarted(self, event: LearnerRestarted) -> None:
        """Continue from the restored checkpoint: the next one is due after its timestep, and
        newer (bad) ones are set aside, as a resume does."""
        if self.folder is None:
            return
        for path in list_checkpoints(self.folder.parent):
            timestep = int(_NAME.match(path.name).group(1))  # type: ignore[union-attr]
            if timestep > event.timestep:
                aside = path.with_name(f"{path.name}.abandoned-{int(time.time())}")
                log.warning("%s is newer than the restored timestep %d; renamed to %s",
                            path.name, event.timestep, aside.name)
                path.rename(aside)
                self.saved.pop(path.name, None)
        self.last_timestep = event.timestep
        interval = self.settings.interval_timesteps
        self.next_due = None if interval is None else (event.timestep // interval + 1) * interval

    def on_evaluation_done(self, event: EvaluationDone) -> None:
        self.measured_since_save = True
        old = self.merits.get(event.version)
        if event.elo is not None:  # a rating takes every opponent into account
            self.merits[event.version] = (1, float(event.elo))
        elif old is None or old[0] == 0:  # unrated: the score against the hardest opponent
            self.merits[event.version] = (0, min(event.score, old[1]) if old else event.score)
        self._update_best()

    def on_train_end(self, event: TrainEnd) -> None:
        if self._writer is None:
            return
        # The saves still in flight first: the best is then chosen among every checkpoint,
        # and the end checkpoint's own state names it.
        self._writer.wait()
        self._poll()
        # The end of the run is saved, even when its last update already was: the final
        # evaluation finishes after that save (the default intervals always do this), and
        # what it measured must be in the checkpoint a resume starts from.
        if event.snapshot is not None and (event.timestep != self.last_timestep
                                           or self.measured_since_save):
            reason = "end" if event.reason == "completed" else "interrupt"
            self._save(event.snapshot, event.timestep, reason)
        self._writer.wait()  # the last checkpoint must be on disk before the process ends
        self._poll()
        self._writer.wait()
        self._writer.close()
        self._writer = None

    # ---------------------------------------------------------------- internals
    def _restore_best(self) -> None:
        """Keep the best checkpoint that RUN/checkpoints/best.json names.

        A checkpoint's state is a cut: an evaluation that finished after it (before a crash or
        a kill) rated a checkpoint the state does not know as the best. best.json was written
        then; its checkpoint and merit stay, so a lower-rated one never displaces (and prunes)
        it. One of an abandoned future (not among the saved checkpoints) is ignored.
        """
        assert self.folder is not None
        path = self.folder / BEST_FILE
        if not path.is_file():
            return
        try:
            best = json.loads(path.read_text(encoding="utf-8"))
            name, version = str(best["checkpoint"]), int(best["version"])
            merit = (int(bool(best["rated"])), float(best["merit"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s is unreadable (%s): the best checkpoint is the resumed state's",
                        path, exc)
            return
        if self.saved.get(name, (None, None))[1] == version:
            if version not in self.merits:
                log.info("%s: %s is the best checkpoint (%s), rated after the resumed "
                         "checkpoint was taken", path, name,
                         f"Elo {signed(merit[1], 1)}" if merit[0] else f"score {merit[1]:.3f}")
            self.merits.setdefault(version, merit)
            if self.best not in self.saved:
                self.best = name
        if self.best is not None and self.best not in self.saved:
            self.best = None  # gone with an abandoned future, or deleted
        self._update_best()

    def _save(self, capture: Callable[[], Callable[[], RunSnapshot]], timestep: int,
              reason: str) -> None:
        """Capture the snapshot now (the driver's only cost: `stall_s`); fetch it, write it,
        hash and fsync it in the writer thread."""
        assert self._writer is not None and self.folder is not None
        start = time.perf_counter()
        fetch = capture()
        self.stall_s.append(time.perf_counter() - start)
        self.last_timestep = timestep
        self.measured_since_save = False
        folder, run_id = self.folder, self.run_id

        def job() -> _Saved:
            began = time.perf_counter()
            snapshot = fetch()
            path = write_checkpoint(folder, snapshot, run_id=run_id, reason=reason)
            return _Saved(path, snapshot.timestep, snapshot.version, reason,
                          time.perf_counter() - began)

        self._writer.submit(job)

    def _poll(self) -> None:
        """Announce the checkpoints the writer finished (on the driver thread), then rotate."""
        if self._writer is None:
            return
        while True:
            try:
                saved = self._writer.done.get_nowait()
            except queue.Empty:
                break
            self.save_s.append(saved.seconds)
            self.saved[saved.path.name] = (saved.timestep, saved.version)
            log.info("checkpoint %s saved (%s, %.2f s)", saved.path, saved.reason, saved.seconds)
            if self.bus is not None:
                self.bus.emit(CheckpointSaved(saved.timestep, saved.version, saved.path,
                                              saved.reason))
            self._update_best()
            self._rotate()

    def _update_best(self) -> None:
        if not self.settings.keep_best or self.folder is None:
            return
        rated = [(self.merits[version], name) for name, (_, version) in self.saved.items()
                 if version in self.merits]
        if not rated:
            return
        merit, name = max(rated)
        if name == self.best:
            return
        self.best = name
        timestep, version = self.saved[name]
        write_atomic(self.folder / BEST_FILE, _json_bytes(
            {"checkpoint": name, "timestep": timestep, "version": version,
             "rated": bool(merit[0]), "merit": merit[1]}))
        log.info("best checkpoint is now %s (%s)", name,
                 f"Elo {signed(merit[1], 1)}" if merit[0] else f"score {merit[1]:.3f}")
        if self.bus is not None:
            self.bus.emit(CheckpointSaved(timestep, version, self.folder / name, "best"))

    def _rotate(self) -> None:
        """Delete checkpoints beyond the newest `keep_last` (never the best), in the writer."""
        assert self._writer is not None and self.folder is not None
        names = sorted(self.saved, key=lambda n: self.saved[n][0], reverse=True)
        doomed = [n for n in names[self.settings.keep_last:] if n != self.best]
        for name in doomed:
            del self.saved[name]
        if doomed:
            folder = self.folder

            def job() -> None:
                for name in doomed:
                    shutil.rmtree(folder / name, ignore_errors=True)

            self._writer.submit(job)
