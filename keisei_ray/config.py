"""The configuration schema: every setting and default of keisei-ray, declared once.

Only the pydantic models live here (and `ConfigError`); reading, merging, overriding and
validating configs is keisei_ray/config_loading.py, which imports this module (never the reverse).

Longer than other modules by design: it is the one place every setting and default is
declared, with its description and bounds.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keisei_ray.text import did_you_mean

TIME_BUDGET_ALONE_TIMESTEPS = 10**12
"""`train.total_timesteps` when a config gives `train.max_minutes` but no timestep budget."""


class ConfigError(ValueError):
    """A configuration file, override or value is invalid; the message names the field."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EnvConfig(Section):
    """The game as the environment plays it."""

    max_moves: int = Field(512, ge=1, le=32_767, description="ply cap: a draw, for statistics "
                           "and for learning alike (a terminal: the ply is in the observation, "
                           "so the cap is part of the game; no bootstrap)")
    impasse: Literal["off", "27"] = Field("off", description="entering-king declaration rule")

    @field_validator("impasse", mode="before")
    @classmethod
    def _impasse_from_int(cls, value: Any) -> Any:
        # YAML reads `impasse: 27` as an int; accept it as the rule's name.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class ModelConfig(Section):
    """The policy-value network: a named size, optionally overridden piece by piece."""

    size: Literal["tiny", "small", "large"] = Field(
        "small", description="tiny: tests; small: fast CPU self-play; large: GPU cluster (~10M)")
    blocks: int | None = Field(None, ge=1, le=64, description="residual blocks (None: the size's)")
    channels: int | None = Field(None, ge=8, le=1024,
                                 description="channels of the tower (None: the size's)")
    squeeze_excitation: bool | None = Field(
        None, description="squeeze-excitation in each block (None: the size's)")
    attack_planes: bool = Field(
        False, description="4 more input planes: how many pieces of each side attack each "
        "square, and the value of each attacked piece (costs a CPU worker about 16% of its "
        "decisions per second)")
    policy_head: Literal["relative", "absolute"] = Field(
        "relative", description="relative: board moves scored per (direction and distance, "
        "promotion), the same channel at every square (AlphaZero's encoding); absolute: per "
        "destination square (the older layout, far slower to learn; kept to load older "
        "checkpoints)")
    norm: Literal["group", "batch"] = Field(
        "group", description="group: GroupNorm, the same numbers in training and in the "
        "workers' eval mode, so PPO's ratio starts at exactly 1; batch: BatchNorm, whose batch "
        "statistics in training differ from the running ones the workers act with (biased "
        "ratios: approx_kl ~0.07 before any step on a fresh model)")


class PPOConfig(Section):
    """PPO and GAE: the learner's update and the workers' advantage estimates."""

    gamma: float = Field(0.99, gt=0.0, le=1.0, description="discount per ply (a transition "
                         "whose opponent reply is folded in spans two plies: gamma^2)")
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0, description="GAE lambda, per ply like "
                              "gamma (lambda^2 over a two-ply transition)")
    clip_range: float = Field(0.2, gt=0.0, lt=1.0, description="policy ratio clip, around the "
                              "proximal policy (ppo.decoupled) or the behaviour policy")
    decoupled: bool = Field(
        True, description="decoupled PPO (Hilton et al. 2021): one no-grad forward at the "
        "start of each update gives the proximal policy (the learner's own); the clip and "
        "target_kl are centred on it and each row is weighted by its behaviour ratio "
        "pi_prox / pi_behaviour, clipped at behaviour_ratio_clip. false: the clip is centred "
        "on the behaviour policy that played the row (classic PPO; the workers' data is one "
        "version old when pipelined)")
    behaviour_ratio_clip: float = Field(
        2.0, ge=1.0, le=1000.0, description="upper bound of each row's behaviour ratio "
        "pi_prox / pi_behaviour (ppo.decoupled), as V-trace truncates its importance weights")
    value_clip_range: float | None = Field(
        None, gt=0.0, description="per-element value clip around the proximal value "
        "(ppo.decoupled) or the behaviour value (None: off)")
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="initial learning rate "
                                 "(1e-3 with 2 epochs learned fastest per CPU minute here)")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="learning rate over progress = accepted timesteps / total")
    final_learning_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="learning rate reached at the end of training "
        "(linear and cosine schedules)")
    entropy_coef: float = Field(0.01, ge=0.0, description="weight of the entropy bonus")
    value_coef: float = Field(0.5, ge=0.0, description="weight of the value loss")
    max_grad_norm: float = Field(0.5, gt=0.0, description="gradient norm clip")
    epochs: int = Field(2, ge=1, le=100, description="passes over each update's transitions "
                        "(on a CPU learner, 2 beat 4 and 1 per wall-clock minute)")
    minibatch_size: int = Field(512, ge=1, le=1_000_000, description="transitions per step")
    micro_batch_size: int | None = Field(
        None, ge=1, le=1_000_000, description="transitions per forward/backward pass: a "
        "minibatch larger than this is split and its gradients accumulated (the optimizer step "
        "and its loss are the minibatch's, as without the split); None: the whole minibatch at "
        "once. train.autotune picks it")
    normalize_advantages: bool = Field(True, description="advantages to zero mean, unit std "
                                       "over each update's transitions")
    target_kl: float | None = Field(
        None, gt=0.0, description="stop the update's remaining steps once a minibatch's "
        "approx KL from the proximal policy (ppo.decoupled; else the behaviour policy) exceeds "
        "this, after at least one optimizer step (None: off)")
    optimizer: Literal["adam", "adamw"] = Field("adam", description="optimizer")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="weight decay "
                                "(decoupled with adamw)")
    adam_eps: float = Field(1e-5, gt=0.0, le=1.0, description="Adam epsilon")
    amp: Literal["off", "bf16", "fp16"] = Field(
        "off", description="mixed precision of the learner's forward pass (fp16 adds a scaler)")
    compile: bool = Field(False, description="torch.compile the learner's forward (on CPU it needs "
                          "a C++ compiler)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "default", description="torch.compile mode of ppo.compile (reduce-overhead: CUDA "
        "graphs, with ppo.fixed_shapes)")
    fixed_shapes: bool = Field(
        False, description="every forward has the same shape (for CUDA graphs): each epoch "
        "trains its full minibatches only (the ragged tail's rows are in other epochs' random "
        "orders; an update with fewer rows than a minibatch trains them as one), and legal "
        "actions are padded to a fixed width per row (the update's widest row rounded up to "
        "64); not with train.search")
    search_coef: float = Field(1.0, ge=0.0, le=1e3, description="weight of the distillation "
                               "term (cross-entropy from the search's improved policy to the "
                               "network's) on the rows that carry a target "
                               "(train.search.simulations > 0)")
    search_value_mix: float = Field(0.0, ge=0.0, le=1.0, description="on rows with a search "
                                    "target, the value target is (1 - this) * return + this * "
                                    "the search's root value")
    max_policy_lag: int = Field(
        1, ge=0, le=1000, description="drop batches whose policy version is more than this "
        "many updates old (0: strictly synchronous)")


class RewardConfig(Section):
    """The reward the workers give each move. The game result is always +1 / -1 / 0."""

    material: float = Field(
        0.0, ge=0.0, le=1.0, description="optional shaping (0 = off): this much per pawn unit of "
        "material the move gains: c * (-gamma * M(next) - M(before)), M = the mover's material "
        "minus the opponent's (board and hands); the final position keeps its M, so a game's "
        "shaping sums to about c * its final balance")
    material_anneal_share: float | None = Field(
        0.5, gt=0.0, le=1.0, description="the material shaping's coefficient falls linearly "
        "to 0 over this share of training (progress: the larger of timesteps / "
        "train.total_timesteps and minutes / train.max_minutes), so the objective at the end "
        "is the game result alone; None: constant")

    def weight_at(self, progress: float) -> float:
        """The shaping's coefficient at training `progress` in [0, 1]: `material`, falling
        linearly to 0 over the first `material_anneal_share` of training (None: constant)."""
        share = self.material_anneal_share
        if share is None:
            return self.material
        return self.material * max(0.0, 1.0 - max(progress, 0.0) / share)


class TrainSearchConfig(Section):
    """Search as a teacher in self-play (issue 24, docs/learning.md): workers choose their
    self-play moves with the Gumbel tree search (the other settings of `search.*`: c_puct,
    fpu, c_visit/c_scale, leaves per forward, mate search), sample the move played from the
    search's improved policy and ship that policy as a distillation target (`ppo.search_coef`).
    Playout-cap randomization (KataGo): a share of the moves gets the full search and a target,
    the rest a cheap search without one."""

    simulations: int = Field(0, ge=0, le=100_000, description="simulations of a full search "
                             "per self-play move; 0: no search, the raw policy (the default)")
    gumbel_moves: int = Field(16, ge=1, le=1000, description="moves a full search considers at "
                              "the root (m of the Gumbel root)")
    full_search_share: float = Field(1.0, gt=0.0, le=1.0, description="share of the moves "
                                     "that get the full search and a distillation target "
                                     "(playout-cap randomization); the rest a cheap search")
    cheap_simulations: int = Field(0, ge=0, le=100_000, description="simulations of a cheap "
                                   "search (no target); 0: the raw policy")

    @model_validator(mode="after")
    def _cheap_below_full(self) -> TrainSearchConfig:
        if self.simulations and self.cheap_simulations > self.simulations:
            raise ValueError(f"cheap_simulations ({self.cheap_simulations}) must not exceed "
                             f"simulations ({self.simulations})")
        return self


class TrainConfig(Section):
    """The actor-learner loop: how much to train, with how many workers, where."""

    total_timesteps: int = Field(200_000, ge=1, description="stop after this many accepted "
                                 "transitions (the driver's timestep counter); when only "
                                 "train.max_minutes is given, 10^12 (the time budget alone)")
    max_minutes: float | None = Field(
        None, gt=0.0, description="also stop after this many minutes of training (from the "
        "first collect; a resumed run counts afresh); the run ends as a completed one, with its "
        "final checkpoint and evaluation")
    num_workers: int | Literal["auto"] = Field(
        "auto", description="self-play workers; auto: as many as the cluster's free CPUs allow "
        "(and grow when nodes join)")
    games_per_worker: int = Field(32, ge=1, le=4096, description="games each worker plays at once")
    rollout_steps: int = Field(32, ge=1, le=4096, description="plies of every game per collect")
    seed: int = Field(0, ge=0, description="seed of the model init, PPO minibatches and workers")
    opponent: str = Field(
        "heuristic", description="the fixed opponent of the games that are not self-play: "
        "heuristic, random, mate, or a USI engine (usi:COMMAND,depth=N,... or an alias such "
        "as sf-d1)")
    opponent_share: float = Field(
        0.0, ge=0.0, lt=1.0, description="share of each worker's games played against "
        "train.opponent instead of itself (its colour alternating); 0 = pure self-play")
    address: str | None = Field(None, description="Ray address: None starts an embedded local "
                                "Ray; 'auto' or 'ray://host:10001' joins a running cluster")
    worker_cpus: float = Field(1.0, gt=0.0, le=64.0, description="CPUs per self-play worker "
                               "(also its torch threads, rounded up)")
    learner_cpus: float = Field(1.0, ge=0.0, le=256.0, description="CPUs reserved for the learner")
    learner_threads: int = Field(
        2, ge=1, le=256, description="torch threads of a CPU learner; may exceed learner_cpus "
        "(a scheduling reservation): workers mostly wait while the learner updates")
    learner_heap_trim_s: float = Field(
        30.0, ge=0.0, description="seconds between handing the learner's freed C heap back to "
        "the OS (glibc malloc_trim, after an update); without it the learner's memory creeps "
        "up for hours; 0: never")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="learner device; auto: cuda when the cluster has a GPU")
    half_weights: bool = Field(False, description="broadcast weights as float16 (half the bytes)")
    max_worker_restarts: int = Field(3, ge=-1, description="Ray restarts per worker actor "
                                     "(-1: unlimited)")
    learner_max_restarts: int = Field(
        3, ge=-1, description="restarts of a lost learner (its actor, its node, an out-of-memory "
        "kill) within learner_restart_window_s, each from the last good checkpoint (the run's "
        "start when none was saved yet); one more loss ends the run with the --resume command; "
        "0: a lost learner ends the run; -1: unlimited")
    learner_restart_window_s: float = Field(3600.0, gt=0.0, description="the window, in "
                                            "seconds, that learner_max_restarts counts in")
    learner_restart_timeout_s: float = Field(
        600.0, gt=0.0, description="wait at most this long for room for a new learner (on a "
        "cluster the autoscaler is asked for its node: that takes minutes)")
    round_timeout_s: float = Field(300.0, gt=0.0, description="a collect round waits at most this "
                                   "long for stragglers; their batches are then dropped")
    autotune: bool = Field(
        False, description="adapt batch sizes to the hardware: at start, games_per_worker "
        "(with rollout_steps, keeping their product: the transitions per collect) for the most "
        "decisions/s of a worker; at start and every autotune_interval_s, ppo.micro_batch_size "
        "for the most learner samples/s within the device's memory (minibatch_size, epochs and "
        "samples per update stay as set)")
    autotune_interval_s: float = Field(300.0, gt=0.0, description="seconds between the "
                                       "learner's micro-batch re-tunes (train.autotune)")
    callbacks: list[str] = Field(default_factory=list, description="extra callbacks, as "
                                 "'package.module:ClassName'")
    runs_dir: str = Field("runs", description="folder that holds one folder per run")
    run_name: str | None = Field(None, description="run folder name (None: timestamp + short id)")
    search: TrainSearchConfig = Field(default_factory=TrainSearchConfig)

    @model_validator(mode="before")
    @classmethod
    def _time_budget_alone(cls, data: Any) -> Any:
        # `train.max_minutes=30` alone means a 30-minute run: the default timestep budget is
        # sized for a quick first run and must not end it after 200 k steps.
        if (isinstance(data, dict) and data.get("max_minutes") is not None
                and "total_timesteps" not in data):
            return {**data, "total_timesteps": TIME_BUDGET_ALONE_TIMESTEPS}
        return data

    @field_validator("num_workers", mode="before")
    @classmethod
    def _worker_count(cls, value: Any) -> Any:
        # Before pydantic's union: one message for every bad value, not one per member.
        if value == "auto":
            return value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
            raise ValueError("expected a number of workers from 1 to 100000, or auto")
        return value

    @field_validator("opponent")
    @classmethod
    def _known_opponent(cls, value: str) -> str:
        from shogi.usi_engine import (  # noqa: PLC0415
            ENGINE_ALIASES,
            EngineSpec,
            is_engine_spec,
        )

        if value in ("heuristic", "random", "mate"):
            return value
        if is_engine_spec(value):
            EngineSpec.parse(value)  # EngineSpecError (a ValueError) names what is wrong
            return value
        raise ValueError(f"expected heuristic, random, mate or a USI engine (usi:... or an "
                         f"alias such as sf-d1)"
                         f"{did_you_mean(value, ['heuristic', 'random', 'mate', *ENGINE_ALIASES])}")


class EvaluationConfig(Section):
    """Evaluation matches: in the background during training, and `keisei-ray evaluate`."""

    enabled: bool = Field(True, description="evaluate the policy in the background during "
                          "training (never blocks collection or updates)")
    interval_timesteps: int = Field(50_000, ge=1, description="evaluate each time the timestep "
                                    "counter crosses a multiple of this, and the final policy "
                                    "of a completed run")
    games: int = Field(64, ge=1, le=100_000, description="games per opponent and evaluation "
                       "(colours alternate)")
    opponents: list[str] = Field(default_factory=lambda: ["random", "heuristic"],
                                 description="fixed opponents: random, heuristic, mate, "
                                 "mix10..mix40, USI engines (usi:... or a gauntlet rung "
                                 "such as sf-d1) or models (a model file, a checkpoint, or a "
                                 "run folder: its best checkpoint)")
    previous: bool = Field(True, description="also play the previously evaluated policy of the "
                           "run (rates checkpoints against each other)")
    greedy: bool = Field(True, description="network players take their most likely move "
                         "(after the sampled opening plies); false: sample with temperature")
    avoid_repetition: bool = Field(True, description="once a position repeats, network "
                                   "players leave out moves back into earlier positions while "
                                   "another move exists")
    temperature: float = Field(1.0, gt=0.0, le=100.0, description="sampling temperature")
    sample_plies: int = Field(8, ge=0, le=512, description="opening plies in which network "
                              "players sample even when greedy (otherwise greedy model-vs-model "
                              "games would all be the same game)")
    games_at_once: int = Field(64, ge=1, le=4096, description="games an evaluation worker plays "
                               "at once (one batched forward per ply)")
    records: int = Field(2, ge=0, le=1000, description="games per match saved as KIF + SVG")
    num_cpus: float = Field(0.0, ge=0.0, le=64.0, description="CPUs the background evaluation "
                            "actor reserves (0: it shares the training CPUs at low priority)")
    priority: Literal["idle", "low", "normal"] = Field(
        "idle", description="CPU priority of the background evaluation actor; idle: only the "
        "CPU time training leaves unused (Linux SCHED_IDLE, elsewhere nice 19); low: nice 10")
    final_wait_s: float = Field(120.0, ge=0.0, description="at the end of training, wait at "
                                "most this long for a running evaluation")
    seed: int = Field(0, ge=0, description="seed of the evaluation games")

    @field_validator("opponents")
    @classmethod
    def _distinct_opponents(cls, value: list[str]) -> list[str]:
        if any(not name.strip() for name in value) or len(set(value)) != len(value):
            raise ValueError("opponents must be distinct, non-empty names")
        return value


class UsiConfig(Section):
    """`keisei-ray usi`: the engine's budget per move and its clock safety. How it searches is
    `search` (c_puct, Gumbel, leaves per forward...), whose `simulations` the engine leaves to
    `usi.simulations`: a GUI's engine searches by default, within the time the GUI gives."""

    simulations: int = Field(10_000, ge=0, le=10_000_000, description="most simulations per "
                             "move (USI option Simulations); the clock stops the search sooner "
                             "as a rule; 0: the raw policy, one forward per move")
    network_delay_ms: int = Field(250, ge=0, le=60_000, description="milliseconds of the "
                                  "clock kept in hand on every move for the pipe's, the GUI's "
                                  "and the last forward's delays (USI option NetworkDelay)")


class CheckpointConfig(Section):
    """Checkpoints of a training run (in RUN_DIR/checkpoints), and what is kept of them."""

    interval_timesteps: int | None = Field(
        50_000, ge=1, description="checkpoint at the first update that crosses each multiple of "
        "this (None: only at the end and on interrupt)")
    keep_last: int = Field(3, ge=1, le=10_000, description="newest checkpoints kept on disk")
    keep_best: bool = Field(True, description="also keep the checkpoint with the best evaluation "
                            "(Elo when rated, else the score against the hardest opponent)")


class WandbConfig(Section):
    """Weights & Biases logging. Off by default: a first run needs no account."""

    mode: Literal["disabled", "offline", "online"] = Field(
        "disabled", description="disabled: no W&B; offline: local files (sync later with "
        "`wandb sync`); online: stream to the server")
    project: str = Field("keisei-ray", min_length=1, description="W&B project")
    entity: str | None = Field(None, description="W&B team or user (None: your default)")
    tags: list[str] = Field(default_factory=list, description="tags of the W&B run")
    log_checkpoints: bool = Field(True, description="upload checkpoints as model artifacts "
                                  "(aliases latest, ts-N, best)")
    retry_initial_s: float = Field(1.0, gt=0.0, le=600.0, description="first retry delay of a "
                                   "failed W&B call (doubles each retry)")
    retry_max_s: float = Field(120.0, gt=0.0, le=3600.0, description="longest retry delay")
    max_attempts: int = Field(8, ge=1, le=100, description="tries of one W&B call before it is "
                              "dropped (logged)")
    finish_timeout_s: float = Field(60.0, ge=0.0, description="at the end, wait at most this long "
                                    "for queued W&B calls and the run's finish")


class ClusterConfig(Section):
    """Placement on a multi-node Ray cluster (see cluster.yaml) and elastic self-play workers."""

    worker_resource: str = Field(
        "selfplay", min_length=1, description="custom resource of the self-play nodes: when the "
        "cluster advertises it (or request_workers asks the autoscaler for such nodes), each "
        "worker takes one unit of it and so runs only on those nodes")
    learner_resource: str = Field(
        "learner", min_length=1, description="custom resource of the learner node: when the "
        "cluster advertises it, the learner takes one unit of it (and so lands only there)")
    request_workers: int = Field(
        0, ge=0, le=100_000, description="ask the autoscaler for room for this many self-play "
        "workers when training starts (withdrawn when it ends); 0: use the nodes that are there")
    start_timeout_s: float = Field(
        600.0, gt=0.0, description="wait at most this long for the first self-play worker to be "
        "placed (an autoscaler takes minutes to start a node)")
    join_wait_s: float = Field(
        10.0, ge=0.0, description="at start, once one worker is up, wait at most this long for "
        "the others; a worker that comes up later joins the next round")


class ProfileConfig(Section):
    """Profiling on demand: torch.profiler traces of a few updates, written to RUN_DIR/profile."""

    updates: int = Field(0, ge=0, le=1000, description="learner updates to profile (with one "
                         "worker's collects and Ray's timeline of the same window); 0: off")
    skip_updates: int = Field(1, ge=1, le=100_000, description="updates to let pass first "
                              "(warm-up: allocations, the first weight loads)")
    memory: bool = Field(True, description="record tensor memory (allocations and frees)")
    with_stack: bool = Field(True, description="record Python stacks (the summary groups ops "
                             "by them; costs time while profiling)")
    top_ops: int = Field(15, ge=1, le=1000, description="ops in the logged summary table")


class LeagueConfig(Section):
    """League self-play: a share of each worker's games against past snapshots of the policy,
    picked by prioritized fictitious self-play (PFSP). Off by default until measured."""

    enabled: bool = Field(False, description="play part of the games against a pool of past "
                          "snapshots of the policy")
    share: float = Field(0.2, ge=0.0, lt=1.0, description="share of each worker's games played "
                         "against pool members (OpenAI Five: 20% past selves)")
    snapshot_interval: int = Field(10, ge=1, le=1_000_000, description="add the policy to the "
                                   "pool every this many updates (the initial policy is the "
                                   "first member)")
    pool_size: int = Field(8, ge=1, le=1000, description="most members the pool holds")
    evict: Literal["oldest", "weakest"] = Field(
        "oldest", description="which member leaves a full pool: the oldest, or the weakest (the "
        "one the learner beats most often); a member still playing games finishes them")
    pfsp_power: float = Field(2.0, ge=0.0, le=100.0, description="PFSP weighting f(x) = (1-x)^p "
                              "over the learner's score x against each member (AlphaStar's "
                              "f_hard); 0: uniform over the pool")
    win_rate_decay: float = Field(0.98, gt=0.0, le=1.0, description="each update multiplies the "
                                  "game counts behind the win-rate table by this (older results "
                                  "count less; 1: never forget)")


class SearchConfig(Section):
    """Tree search at play time (docs/search.md): a model player with simulations > 0 searches
    (PUCT over the policy-value network, optionally a Gumbel root with sequential halving);
    0 plays the raw policy, one forward per move."""

    simulations: int = Field(0, ge=0, le=10_000_000, description="simulations per move (leaf "
                             "evaluations and terminal visits); 0: the raw policy")
    c_puct: float = Field(1.25, gt=0.0, le=100.0, description="PUCT exploration constant "
                          "(values in [-1, 1])")
    fpu_reduction: float = Field(0.2, ge=0.0, le=2.0, description="first-play urgency: an "
                                 "unvisited move is valued at its parent's value minus this "
                                 "times the square root of the prior mass already visited")
    gumbel: bool = Field(True, description="Gumbel root: sample gumbel_moves moves, sequential "
                         "halving over the budget, completed-Q improved policy (Danihelka et al. "
                         "2022; holds up at 8-64 simulations); false: PUCT at the root too")
    gumbel_moves: int = Field(16, ge=1, le=1000, description="moves considered at a Gumbel "
                              "root (m in the paper)")
    gumbel_c_visit: float = Field(50.0, ge=0.0, le=1e6, description="sigma(q) = (c_visit + "
                                  "max visits) * c_scale * q, q mapped to [0, 1]")
    gumbel_c_scale: float = Field(1.0, gt=0.0, le=1e3, description="see gumbel_c_visit")
    leaves_per_forward: int = Field(8, ge=1, le=4096, description="leaves one tree sends to "
                                    "each forward (virtual loss keeps them apart); many trees "
                                    "at once add theirs to the same forward")
    time_per_move_s: float = Field(0.0, ge=0.0, le=86_400.0, description="also stop a move's "
                                   "search after this many seconds (0: simulations only)")
    mate_plies: int = Field(3, ge=0, le=15, description="before searching, play a forced mate "
                            "within this many plies found by cshogi's mate search (odd: 1, 3, "
                            "5...; 0: off)")
    mate_leaves: bool = Field(True, description="value leaves whose side to move mates in one "
                              "as won (not evaluated by the network)")
    reuse_tree: bool = Field(True, description="keep the subtree of the moves played between "
                             "one search of a game and the next")

    @field_validator("mate_plies")
    @classmethod
    def _odd_plies(cls, value: int) -> int:
        if value and value % 2 == 0:
            raise ValueError(f"a mate is an odd number of plies (1, 3, 5...) or 0, got {value}")
        return value


class InferenceConfig(Section):
    """Batched inference for the self-play workers (docs/cluster.md "Batched inference"): one
    inference actor evaluates the positions of many workers in large batches, on a GPU when
    there is one (SEED RL's central inference). Off by default: on CPU it is not expected to
    win; a worker whose server is gone plays on with its own CPU copy of the policy."""

    enabled: bool = Field(False, description="the workers send their positions to the "
                          "inference actor instead of running their own forward")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="the inference actor's device; auto: cuda when the cluster has a "
        "GPU (as train.device)")
    placement: Literal["learner", "own"] = Field(
        "learner", description="on cuda: learner: on the learner's node, sharing its GPU (the "
        "learner then asks Ray for 1 - num_gpus of it); own: a GPU share of its own, anywhere")
    num_gpus: float = Field(0.25, gt=0.0, le=1.0, description="the GPU share the inference "
                            "actor asks Ray for on cuda (with placement=learner, below 1)")
    num_cpus: float = Field(1.0, ge=0.0, le=64.0, description="CPUs reserved for the "
                            "inference actor (also its torch threads, rounded up, at least 1)")
    max_batch: int = Field(4096, ge=1, le=1_000_000, description="most positions in one "
                           "forward (requests are never split: one larger than this runs alone)")
    max_wait_ms: float = Field(2.0, ge=0.0, le=10_000.0, description="how long the first "
                               "waiting request may wait for others to join its batch")
    versions_kept: int = Field(2, ge=1, le=64, description="policy versions the actor keeps "
                               "loaded (a round and its stragglers); an older one is loaded "
                               "again from the request's weights")
    timeout_s: float = Field(60.0, gt=0.0, description="a worker waits at most this long for "
                             "a reply, then plays the rest of its collect with its own copy")
    max_restarts: int = Field(-1, ge=-1, description="Ray restarts of the inference actor "
                              "(-1: unlimited; it holds no state but the weights); one killed "
                              "for good is replaced by the driver between rounds")

    @model_validator(mode="after")
    def _learner_keeps_a_share(self) -> InferenceConfig:
        if self.placement == "learner" and self.num_gpus >= 1.0:
            raise ValueError("inference.num_gpus must be below 1 with inference.placement="
                             "learner (the learner keeps the rest of its GPU); use "
                             "placement=own for a whole GPU")
        return self


class Config(Section):
    """The root of the configuration. Later sections hang here."""

    env: EnvConfig = Field(default_factory=EnvConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    usi: UsiConfig = Field(default_factory=UsiConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    profile: ProfileConfig = Field(default_factory=ProfileConfig)
    league: LeagueConfig = Field(default_factory=LeagueConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)

    @model_validator(mode="after")
    def _fixed_shapes_without_targets(self) -> Config:
        # Padded legal actions and the teacher's per-legal-action targets do not mix (yet).
        if self.ppo.fixed_shapes and self.train.search.simulations > 0:
            raise ValueError("ppo.fixed_shapes: not with train.search.simulations > 0 (the "
                             "search targets are not padded)")
        return self
