"""The policy-value network, masked policy maths, and batched inference for the workers.

`PolicyValueNet` maps planes [N, 46 or 50, 9, 9] to 13527 policy logits and a value in [-1, 1] for
the side to move. The policy head is fully convolutional. At every to-square it predicts 7
channels ("drop piece", index 12960 + to*7 + piece). For board moves, the default `relative`
head predicts at every from-square one channel per (displacement, promote flag): 68
displacements (the 8 lines and diagonals up to 8 squares, 4 knight jumps) x 2 = 136 channels, so
a channel means the same move everywhere (AlphaZero's encoding) and the tower's features at the
from-square, which see the squares around it, can tell what the move would capture. The
`absolute` head (the older layout) predicts 160 channels "to square k" at every from-square: a
shared 1x1 convolution then has to know where it stands to rank targets, and it learned
captures far slower (README, "Does it learn?"). One gather (`action_index`) puts either head's
output in the action layout (from*160 + 2*k + promote); the (from, to) pairs no piece can ever
move between (64% of them) get a constant 0 from the relative head: they are never legal.

`LegalPolicy` restricts the logits to each row's legal actions, sparsely and NaN-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from keisei_ray.config import ModelConfig
from learner.features import from_numpy, num_planes
from shogi import NUM_ACTIONS
from shogi.compact import BOARD_SIDE, BOARD_SIZE, HAND_SIZE

MOVE_CHANNELS = 2 * (BOARD_SIZE - 1)  # 160: 80 to-squares x promote flag, per from-square
DROP_CHANNELS = HAND_SIZE  # 7: P L N S G B R, per to-square


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a network; named sizes below, resolved from the config by `spec_for`."""

    blocks: int
    channels: int
    squeeze_excitation: bool
    norm: str = "group"
    attack_planes: bool = False  # the input has the 4 attack planes (50 planes, not 46)
    policy_head: str = "relative"  # board moves by displacement, or by absolute to-square


SIZES: dict[str, ModelSpec] = {
    "tiny": ModelSpec(blocks=1, channels=16, squeeze_excitation=False),
    "small": ModelSpec(blocks=2, channels=32, squeeze_excitation=False),
    "large": ModelSpec(blocks=8, channels=256, squeeze_excitation=True),  # ~10M parameters
}


def spec_for(config: ModelConfig) -> ModelSpec:
    """The named size of `config` with its explicit overrides applied."""
    base = SIZES[config.size]
    return ModelSpec(
        blocks=base.blocks if config.blocks is None else config.blocks,
        channels=base.channels if config.channels is None else config.channels,
        squeeze_excitation=(base.squeeze_excitation if config.squeeze_excitation is None
                            else config.squeeze_excitation),
        norm=config.norm,
        attack_planes=config.attack_planes,
        policy_head=config.policy_head,
    )


def _displacements() -> list[tuple[int, int]]:
    """(rows, columns) a shogi piece can ever move by: lines, diagonals, knight jumps."""
    span = range(1 - BOARD_SIDE, BOARD_SIDE)
    return sorted((dr, dc) for dr in span for dc in span if (dr, dc) != (0, 0)
                  and (dr == 0 or dc == 0 or abs(dr) == abs(dc) or (abs(dr), abs(dc)) == (2, 1)))


RELATIVE_CHANNELS = 2 * len(_displacements())  # 136


def action_index(policy_head: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each of the 13527 actions' logits sits in the policy head's output [C, 9, 9]:
    long [13527] indices into it flattened channel-major (NCHW) and square-major
    (channels_last), C * 81 (an appended constant 0) for a board move no piece can make."""
    frm, rest = np.divmod(np.arange(BOARD_SIZE * MOVE_CHANNELS), MOVE_CHANNELS)
    if policy_head == "relative":
        k, promote = np.divmod(rest, 2)
        to = k + (k >= frm)
        first = {d: 2 * i for i, d in enumerate(_displacements())}
        channel = np.array([first.get(d, -1) for d in zip(
            (to // BOARD_SIDE - frm // BOARD_SIDE).tolist(),
            (to % BOARD_SIDE - frm % BOARD_SIDE).tolist(), strict=True)])
        possible = channel >= 0
        channel = channel + promote
        move_channels = RELATIVE_CHANNELS
    elif policy_head == "absolute":
        channel, possible, move_channels = rest, np.ones(len(rest), bool), MOVE_CHANNELS
    else:
        raise ValueError(f"unknown policy head {policy_head!r} (expected 'relative' or "
                         "'absolute')")
    drop_to, piece = np.divmod(np.arange(BOARD_SIZE * DROP_CHANNELS), DROP_CHANNELS)
    channels = np.concatenate([channel, move_channels + piece])
    squares = np.concatenate([frm, drop_to])
    possible = np.concatenate([possible, np.ones(len(piece), bool)])
    c = move_channels + DROP_CHANNELS
    nchw = np.where(possible, channels * BOARD_SIZE + squares, c * BOARD_SIZE)
    nhwc = np.where(possible, squares * c + channels, c * BOARD_SIZE)
    return torch.from_numpy(nchw), torch.from_numpy(nhwc)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    raise ValueError(f"unknown norm {kind!r} (expected 'batch' or 'group')")


def _conv_block(kind: str, c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        _norm(kind, c_out),
        nn.ReLU(inplace=True),
    )


class SqueezeExcitation(nn.Module):
    """Channel gating by a global-average-pool bottleneck (Hu et al. 2018)."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: str, squeeze_excitation: bool) -> None:
        super().__init__()
        self.conv1 = _conv_block(norm, channels, channels, 3)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, channels)
        self.se: nn.Module = SqueezeExcitation(channels) if squeeze_excitation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.norm2(self.conv2(self.conv1(x))))
        return torch.relu(x + y)


class PolicyValueNet(nn.Module):
    """Residual tower with a convolutional policy head and a tanh value head."""

    index_nchw: torch.Tensor  # buffers: `action_index` of the head
    index_nhwc: torch.Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        # Not a weight: the material shaping's coefficient the value head's targets counted
        # (reward.material at its anneal when the weights were saved). Such a value is the
        # expected result plus C times (the final material balance - the current one), so a
        # search adds C times the current balance back (actors/search.py). Set on loading.
        self.value_material = 0.0
        c = spec.channels
        self.stem = _conv_block(spec.norm, num_planes(spec.attack_planes), c, 3)
        self.tower = nn.Sequential(
            *(ResidualBlock(c, spec.norm, spec.squeeze_excitation) for _ in range(spec.blocks)))
        index_nchw, index_nhwc = action_index(spec.policy_head)
        # Not part of the weights: fixed tables that follow the model to its device.
        self.register_buffer("index_nchw", index_nchw, persistent=False)
        self.register_buffer("index_nhwc", index_nhwc, persistent=False)
        move_channels = RELATIVE_CHANNELS if spec.policy_head == "relative" else MOVE_CHANNELS
        self.policy_head = nn.Sequential(
            _conv_block(spec.norm, c, c, 3),
            nn.Conv2d(c, move_channels + DROP_CHANNELS, 1),
        )
        hidden = max(64, c)
        self.value_head = nn.Sequential(
            _conv_block(spec.norm, c, 2, 1),
            nn.Flatten(),
            nn.Linear(2 * BOARD_SIZE, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
            nn.Tanh(),
        )

    def heads(self, planes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the policy head's output [N, C, 9, 9] in fp32, value [N]) of planes [N, 46 or 50,
        9, 9]: what `legal_logits` reads the legal moves' logits from, with no dense
        [N, 13527] tensor in the forward or the backward."""
        x = self.tower(self.stem(planes))
        # The policy head runs in fp32 even under autocast: in bf16 (8 bits of mantissa) logits
        # of a few units are off by ~0.02, and so are the learner's log-probs from the fp32 ones
        # the workers sampled with (ratios off by 2% at zero lag).
        with torch.autocast(x.device.type, enabled=False):
            out = self.policy_head(x.float())
        return out, self.value_head(x).squeeze(1)

    def _flat(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The head's output read in the order it lies in memory (a channels_last model's is
        # square-major): a view, never a copy; and the action index of that order.
        n = out.shape[0]
        if out.is_contiguous():
            return out.reshape(n, -1), self.index_nchw
        return out.permute(0, 2, 3, 1).reshape(n, -1), self.index_nhwc

    def dense_logits(self, out: torch.Tensor) -> torch.Tensor:
        """All 13527 actions' logits [N, 13527] of a `heads` output (0 where no piece can
        move)."""
        flat, index = self._flat(out)
        return F.pad(flat, (0, 1)).index_select(1, index)

    def legal_logits(self, out: torch.Tensor, rows: torch.Tensor,
                     cols: torch.Tensor) -> torch.Tensor:
        """The logits [M] of actions cols[j] of rows rows[j], read straight from a `heads`
        output: equal to dense_logits(out)[rows, cols], without the dense tensor (its
        gradient reaches only the M entries read)."""
        flat, index = self._flat(out)
        where = index[cols]
        width = flat.shape[1]
        # A (from, to) pair no piece can move between has the constant 0 (never legal).
        possible = where < width
        taken = flat.reshape(-1)[rows * width + where.clamp(max=width - 1)]
        return torch.where(possible, taken, 0.0)

    def forward(self, planes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy logits [N, 13527] in fp32, value [N]) of planes [N, 46 or 50, 9, 9]."""
        out, value = self.heads(planes)
        return self.dense_logits(out), value


def build_model(config: ModelConfig) -> PolicyValueNet:
    """A freshly initialised network of the configured size."""
    return PolicyValueNet(spec_for(config))


# ----------------------------------------------------------------------------- masked policy


def csr_rows(offsets: torch.Tensor, num_entries: int) -> torch.Tensor:
    """The row [M] of each entry of a CSR list: row i owns entries offsets[i]:offsets[i + 1].
    `num_entries` (M, offsets[-1]) comes from the caller so that no device value is read."""
    n = offsets.shape[0] - 1
    counts = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(n, device=offsets.device), counts,
                                   output_size=num_entries)


@dataclass(frozen=True)
class LegalPolicy:
    """The policy of N rows restricted to their legal actions, held sparsely.

    Only the M legal entries (rows[j], cols[j]) are touched, which is far cheaper than dense
    ops over all 13527 actions of every row, and illegal actions get no gradient by
    construction. Everything stays finite: a row without a legal action has log-prob 0,
    entropy 0, passes no gradient, and samples action -1. Nothing is edited in place. No step
    reads a device value on the host (no synchronisation on CUDA). Entries with `valid` False
    (padding of a fixed-width layout) take no part.
    """

    rows: torch.Tensor  # long [M]
    cols: torch.Tensor  # long [M]
    log_probs: torch.Tensor  # float32 [M]: log-prob of each legal entry (0 for padding)
    log_norm: torch.Tensor  # float32 [N]: log-sum-exp of each row's legal logits (0 if none)
    has_legal: torch.Tensor  # bool [N]
    valid: torch.Tensor | None = None  # bool [M], None: every entry is a legal action

    @classmethod
    def from_legal_logits(cls, z: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                          n: int, valid: torch.Tensor | None = None) -> LegalPolicy:
        """From the logits z [M] of the legal entries (rows[j], cols[j]) of N rows."""
        z = z.float()
        device = z.device
        if valid is None:
            has_legal = torch.zeros(n, dtype=torch.bool, device=device).index_fill(0, rows, True)
            live = z
        else:
            has_legal = torch.zeros(n, device=device).index_add(0, rows, valid.float()) > 0
            live = torch.where(valid, z, -math.inf)
        with torch.no_grad():  # any per-row shift works; the max keeps exp() in range
            top = torch.full((n,), -math.inf, device=device)
            top = torch.where(has_legal, top.scatter_reduce(0, rows, live.detach(), "amax"), 0.0)
        shifted = z - top[rows]
        if valid is not None:  # padding: 0 (finite, so no NaN reaches a gradient), then out
            shifted = torch.where(valid, shifted, 0.0)
        terms = shifted.exp()
        if valid is not None:
            terms = torch.where(valid, terms, 0.0)
        sums = torch.zeros(n, device=device).index_add(0, rows, terms)
        log_norm = top + torch.where(has_legal, sums, 1.0).log()
        log_probs = z - log_norm[rows]
        if valid is not None:
            log_probs = torch.where(valid, log_probs, 0.0)
        return cls(rows, cols, log_probs, log_norm, has_legal, valid)

    @classmethod
    def from_entries(cls, logits: torch.Tensor, rows: torch.Tensor,
                     cols: torch.Tensor) -> LegalPolicy:
        """From dense logits [N, 13527] and the legal entries (rows[j], cols[j])."""
        return cls.from_legal_logits(logits[rows, cols], rows, cols, logits.shape[0])

    @classmethod
    def from_mask(cls, logits: torch.Tensor, mask: torch.Tensor) -> LegalPolicy:
        """From dense logits and a bool mask [N, 13527]."""
        rows, cols = mask.nonzero(as_tuple=True)
        return cls.from_entries(logits, rows, cols)

    @classmethod
    def from_csr(cls, logits: torch.Tensor, offsets: torch.Tensor,
                 actions: torch.Tensor) -> LegalPolicy:
        """From dense logits and CSR legal actions: row i's are actions[offsets[i]:offsets[i +
        1]]."""
        rows = csr_rows(offsets.to(logits.device), actions.shape[0])
        return cls.from_entries(logits, rows, actions.long())

    def _entry_mask(self, actions: torch.Tensor) -> torch.Tensor:
        hit = self.cols == actions[self.rows]
        return hit if self.valid is None else hit & self.valid

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Log-prob [N] of one legal action per row (the row's entry of that action); 0 for a
        row without legal actions (and for an action that is not among the row's)."""
        hit = self._entry_mask(actions)
        # Adding zeros keeps the one hit entry's value exact (a legal list has no duplicates).
        return torch.zeros_like(self.log_norm).index_add(
            0, self.rows, torch.where(hit, self.log_probs, 0.0))

    def entropy(self) -> torch.Tensor:
        """Entropy [N] in nats (>= 0) of each row's legal distribution; 0 for none."""
        terms = self.log_probs.exp() * self.log_probs
        if self.valid is not None:
            terms = torch.where(self.valid, terms, 0.0)
        return -torch.zeros_like(self.log_norm).index_add(0, self.rows, terms)

    def choose(self, *, greedy: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One action per row: sampled (Gumbel-max) or the most likely (ties: lowest index).

        -1 for a row without legal actions.
        """
        n = self.log_norm.shape[0]
        scores = self.log_probs.detach()
        if not greedy:
            noise = torch.empty_like(scores).exponential_(generator=generator)
            scores = scores - noise.log()  # + Gumbel(0, 1)
        if self.valid is not None:
            scores = torch.where(self.valid, scores, -math.inf)
        best = torch.full((n,), -math.inf, device=scores.device)
        best = best.scatter_reduce(0, self.rows, scores, "amax")
        hit = scores == best[self.rows]
        if self.valid is not None:
            hit &= self.valid
        lowest = torch.full((n,), NUM_ACTIONS, dtype=torch.long, device=scores.device)
        lowest = lowest.scatter_reduce(0, self.rows, torch.where(hit, self.cols, NUM_ACTIONS),
                                       "amin")
        return torch.where(self.has_legal, lowest, -1)


def choose_actions(
    logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One legal action per row and its log-prob: (actions long [N], log_probs float32 [N]).

    Sampling draws from softmax(logits / temperature) over the legal actions and reports the
    log-prob under that same distribution (the true behaviour probability PPO needs); greedy
    takes the most likely legal action and reports its log-prob at temperature 1. A row with
    no legal action gets action -1 and log-prob 0.
    """
    _check_temperature(temperature)
    scaled = logits if greedy or temperature == 1.0 else logits.float() / temperature
    return _policy_choice(LegalPolicy.from_mask(scaled, mask), greedy=greedy,
                          generator=generator)


def _policy_choice(policy: LegalPolicy, *, greedy: bool,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    actions = policy.choose(greedy=greedy, generator=generator)
    return actions, policy.log_prob(actions)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def _eval_heads(model: PolicyValueNet, planes: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    was_training = model.training
    model.eval()
    try:
        return model.heads(planes)
    finally:
        model.train(was_training)


@torch.inference_mode()
def act(
    model: nn.Module,
    planes: torch.Tensor,
    mask: torch.Tensor,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched inference for self-play and evaluation: (actions, log_probs, values).

    The model runs in eval mode and its mode is restored afterwards. With GroupNorm (the
    default) that is the same function the learner trains in training mode; with BatchNorm
    (model.norm=batch) it is not: eval mode uses the running statistics, the learner's
    training forwards each minibatch's own. Decoupled PPO centres its clip on the learner's
    own training-mode numbers, so that difference lands in the clipped behaviour ratio.
    Actions and log-probs as in `choose_actions`: the sampled log-prob is the true behaviour
    probability of the worker's policy. `act_csr` does the same from CSR legal actions
    without any dense [N, 13527] tensor.
    """
    was_training = model.training
    model.eval()
    try:
        logits, values = model(planes)
    finally:
        model.train(was_training)
    actions, log_probs = choose_actions(logits, mask, greedy=greedy, temperature=temperature,
                                        generator=generator)
    return actions, log_probs, values.float()


@torch.inference_mode()
def act_csr(
    model: PolicyValueNet,
    planes: torch.Tensor,
    offsets: np.ndarray | torch.Tensor,
    legal: np.ndarray | torch.Tensor,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`act` on CSR legal actions (row i's are legal[offsets[i]:offsets[i + 1]]): the legal
    moves' logits are read straight from the policy head's output, the same numbers as
    `act` on the equivalent mask."""
    _check_temperature(temperature)
    out, values = _eval_heads(model, planes)
    cols = torch.as_tensor(legal, device=out.device).long()
    rows = csr_rows(torch.as_tensor(offsets, device=out.device).long(), cols.shape[0])
    z = model.legal_logits(out, rows, cols)
    if not (greedy or temperature == 1.0):
        z = z / temperature
    policy = LegalPolicy.from_legal_logits(z, rows, cols, planes.shape[0])
    actions, log_probs = _policy_choice(policy, greedy=greedy, generator=generator)
    return actions, log_probs, values.float()


# ----------------------------------------------------------------------------- weights


def export_weights(model: nn.Module, half: bool = False) -> dict[str, np.ndarray]:
    """Parameters AND buffers as CPU numpy copies (floats as float16 when `half`).

    Tensors of one dtype are concatenated on their device and copied to the host at once
    (one transfer instead of one per tensor); the arrays are views into that fresh copy, so
    later training never leaks into them. From CUDA the copy lands in pinned memory
    (non_blocking): ~1 ms for the large model on an H100 where a pageable copy took ~35 ms.
    """
    state = {name: t.detach() for name, t in model.state_dict().items()}
    groups: dict[torch.dtype, list[str]] = {}
    for name, t in state.items():
        dtype = torch.float16 if half and t.is_floating_point() else t.dtype
        groups.setdefault(dtype, []).append(name)
    arrays: dict[str, np.ndarray] = {}
    for dtype, names in groups.items():
        # torch.cat always allocates: on the CPU too the result is a copy, not an alias.
        flat = torch.cat([state[name].reshape(-1).to(dtype) for name in names])
        if flat.is_cuda:
            host = flat.to("cpu", non_blocking=True)
            torch.cuda.current_stream(flat.device).synchronize()
            flat = host
        array = flat.numpy()
        offset = 0
        for name in names:
            size = state[name].numel()
            arrays[name] = array[offset:offset + size].reshape(state[name].shape)
            offset += size
    return {name: arrays[name] for name in state}


def load_weights(model: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Load `export_weights` output into `model` (float16 arrays are widened to its dtype)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise ValueError(f"weights do not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    state = {}
    for name, array in weights.items():
        target = own[name]
        if name == "stem.0.weight" and array.shape[1:2] != target.shape[1:2]:
            raise ValueError(f"the weights take {array.shape[1]} input planes, the model "
                             f"{target.shape[1]} (model.attack_planes: 46 planes without, 50 "
                             f"with)")
        if name == "policy_head.1.weight" and array.shape[0] != target.shape[0]:
            kind = {RELATIVE_CHANNELS + DROP_CHANNELS: "relative",
                    MOVE_CHANNELS + DROP_CHANNELS: "absolute"}.get(array.shape[0], "unknown")
            raise ValueError(f"the weights have the {kind} policy head ({array.shape[0]} "
                             f"channels), the model {target.shape[0]} (model.policy_head: set "
                             f"it to {kind!r} to load them)")
        if tuple(array.shape) != tuple(target.shape):
            raise ValueError(f"weight {name!r}: shape {list(array.shape)} does not match the "
                             f"model's {list(target.shape)}")
        state[name] = from_numpy(np.asarray(array)).to(target.device, target.dtype)
    model.load_state_dict(state)
