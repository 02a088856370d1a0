"""Compact state -> the 46 (or 50) input planes and the legal-action mask, vectorised in torch.

Self-play workers and the learner both call these functions, so the network always sees the
same features whichever process built them. Everything is batched (no Python loop over
positions) and runs on whatever device the input tensors live on.

Plane layout (all from the side to move's perspective, square i = row*9 + col):
    0-13   own pieces: P L N S G B R K, then +P +L +N +S +B +R   (board code c > 0 -> plane c-1)
    14-27  the opponent's, same order                             (code c < 0 -> plane 13-c)
    28-34  own hand P L N S G B R, count / (18, 4, 4, 4, 4, 2, 2)
    35-41  the opponent's hand, same scaling
    42     1.0 when the side to move is White
    43     ply / max_moves
    44     repetition count of the position / 3
    45     1.0 when the side to move is in check
  with `attack_planes` (model.attack_planes), also:
    46     how many of the mover's pieces attack the square / 4
    47     how many of the opponent's pieces attack the square / 4
    48     value / 10 of a mover's piece the opponent attacks (what it could capture now)
    49     value / 10 of an opponent's piece the mover attacks (what the mover could capture)

The attack planes spell out what a small network would otherwise have to learn: which squares
each side controls and which pieces hang. Attacks are pseudo-legal (pins are ignored); a
slider's ray stops at the first piece. They cost time (README, Performance) and are off by
default: in 30-minute runs they did not measurably help (README, "Does it learn?").
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from shogi import HAND_MAX, NUM_ACTIONS, CompactState
from shogi.compact import (
    BOARD_SIDE,
    BOARD_SIZE,
    MAX_REPETITION,
    PIECE_SLIDES,
    PIECE_STEPS,
    PIECE_VALUE,
    STATE_FIELDS,
    STATE_LAYOUT,
)

PIECE_PLANES = 28  # 14 piece kinds x 2 sides
SCALAR_PLANES = 18  # hands, colour, ply, repetition, check
NUM_PLANES = PIECE_PLANES + SCALAR_PLANES  # DESIGN.md's layout, the default
ATTACK_PLANES = 4  # optional: attacker counts of both sides, attacked pieces of both sides


def num_planes(attack_planes: bool) -> int:
    """Input planes of the network: 46, or 50 with the attack planes."""
    return NUM_PLANES + ATTACK_PLANES * attack_planes


@dataclass(frozen=True)
class _AttackTables:
    """Row bitboards for `attack_counts`: a board is 9 rows of 9-bit integers (bit c = column
    c). One channel per (kind, side, direction): the step channels move once, the slide
    channels move until they leave the board or pass a piece."""

    select: torch.Tensor  # float32 [C, 28]: the piece planes that start each channel
    rows: torch.Tensor  # long [C, 9]: the row a step comes from (9: none, reads zero)
    left: torch.Tensor  # int32 [C, 1]: the bit shift of a step (column + 1 is bit << 1)
    right: torch.Tensor  # int32 [C, 1]
    side: torch.Tensor  # float32 [2, C]: 1 where the channel is the mover's (row 0) / not
    num_steps: int  # channels [0, num_steps) step, the rest slide
    bit_values: torch.Tensor  # float32 [9]: 2 ** column, to pack a row
    unpack: torch.Tensor  # float32 [512, 9]: a row's bits as 0/1 per column
    value: torch.Tensor  # float32 [29]: signed board code + 14 -> the piece's value / 10


@functools.lru_cache(maxsize=8)
def _attack_tables(device: torch.device) -> _AttackTables:
    channels = []  # (moves, side, direction as the piece's owner sees it, direction on board)
    for moves in (PIECE_STEPS, PIECE_SLIDES):
        directions = sorted({d for ds in moves.values() for d in ds})
        for side, sign in ((0, 1), (1, -1)):  # the opponent moves down the board
            channels += [(moves, side, (dr, dc), (sign * dr, sign * dc)) for dr, dc in directions]
    select = np.zeros((len(channels), PIECE_PLANES), dtype=np.float32)
    rows = np.full((len(channels), BOARD_SIDE), BOARD_SIDE, dtype=np.int64)
    shifts = np.zeros((2, len(channels), 1), dtype=np.int32)
    side_of = np.zeros((2, len(channels)), dtype=np.float32)
    for k, (moves, side, direction, (dr, dc)) in enumerate(channels):
        for code, moving in moves.items():
            select[k, code - 1 + 14 * side] = direction in moving
        for row in range(BOARD_SIDE):
            if 0 <= row - dr < BOARD_SIDE:
                rows[k, row] = row - dr
        shifts[:, k, 0] = max(dc, 0), max(-dc, 0)
        side_of[side, k] = 1
    bits = (np.arange(1 << BOARD_SIDE)[:, None] >> np.arange(BOARD_SIDE)) & 1

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(device)

    return _AttackTables(
        select=tensor(select), rows=tensor(rows), left=tensor(shifts[0]),
        right=tensor(shifts[1]), side=tensor(side_of),
        num_steps=sum(moves is PIECE_STEPS for moves, *_ in channels),
        bit_values=tensor(2.0 ** np.arange(BOARD_SIDE, dtype=np.float32)),
        unpack=tensor(bits.astype(np.float32)),
        value=tensor(np.concatenate([PIECE_VALUE[:0:-1], PIECE_VALUE]) / np.float32(10)))


@dataclass(frozen=True)
class StateTensors:
    """A batch of compact states as torch tensors on one device (the fields, dtypes and shapes
    of shogi.compact.STATE_LAYOUT)."""

    board: torch.Tensor
    hands: torch.Tensor
    color: torch.Tensor
    ply: torch.Tensor
    repetition: torch.Tensor
    in_check: torch.Tensor

    def __len__(self) -> int:
        return int(self.board.shape[0])

    def index(self, rows: torch.Tensor) -> StateTensors:
        """The states at `rows` (a long tensor on the same device)."""
        return StateTensors(**{name: getattr(self, name)[rows] for name in STATE_FIELDS})

    @classmethod
    def zeros(cls, n: int, device: torch.device | str = "cpu") -> StateTensors:
        """N all-zero states on `device` (a pre-allocated buffer)."""
        return cls(**{f.name: torch.zeros(n, *f.shape, dtype=_TORCH_DTYPES[f.dtype],
                                          device=device) for f in STATE_LAYOUT})


_TORCH_DTYPES = {f.dtype: torch.from_numpy(np.zeros(0, dtype=f.dtype)).dtype for f in STATE_LAYOUT}
if tuple(f.name for f in dataclasses.fields(StateTensors)) != STATE_FIELDS:
    raise TypeError("StateTensors' fields must be STATE_LAYOUT's, in its order")


def from_numpy(array: np.ndarray) -> torch.Tensor:
    """`torch.from_numpy` that also takes read-only arrays, for callers that only read.

    Ray hands out object-store arrays as read-only zero-copy views; torch warns about those
    even when the tensor is only copied from.
    """
    array = np.ascontiguousarray(array)
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def to_tensors(state: CompactState, device: torch.device | str = "cpu") -> StateTensors:
    """Move a numpy compact-state batch to torch tensors on `device` (no copy on CPU)."""
    def move(array: np.ndarray) -> torch.Tensor:
        return from_numpy(array).to(device, non_blocking=True)

    return StateTensors(**{name: move(getattr(state, name)) for name in STATE_FIELDS})


def _step(bits: torch.Tensor, rows: torch.Tensor, left: torch.Tensor,
          right: torch.Tensor) -> torch.Tensor:
    """Row bitboards [M, C, 9] moved one step along each channel's direction."""
    m, c, _ = bits.shape
    moved = F.pad(bits, (0, 1)).gather(2, rows.expand(m, c, BOARD_SIDE))  # the pad row is zero
    return ((moved << left) >> right) & ((1 << BOARD_SIDE) - 1)


def attack_counts(pieces: torch.Tensor) -> torch.Tensor:
    """float32 [N, 2, 81]: how many of the mover's pieces (row 0) and of the opponent's (1)
    attack each square, from the piece planes [N, 28, 81] (planes 0-27 of the layout)."""
    t = _attack_tables(pieces.device)
    n = pieces.shape[0]
    # Exact integer sums (< 512) in float32; autocast's bfloat16 would round them.
    with torch.autocast(pieces.device.type, enabled=False):
        start = ((t.select @ pieces).view(n, -1, BOARD_SIDE, BOARD_SIDE) @ t.bit_values
                 ).to(torch.int32)
        occupied = (pieces.sum(1).view(n, 1, BOARD_SIDE, BOARD_SIDE) @ t.bit_values
                    ).to(torch.int32)
    s = t.num_steps
    hits = _step(start[:, :s], t.rows[:s], t.left[:s], t.right[:s])
    ray = start[:, s:]
    reached = torch.zeros_like(ray)
    for _ in range(BOARD_SIDE - 1):
        ray = _step(ray, t.rows[s:], t.left[s:], t.right[s:])
        reached |= ray
        ray &= ~occupied  # a ray goes on only through empty squares
        if ray.device.type == "cpu" and not bool(ray.any()):  # (on a GPU the check would sync)
            break
    # In one channel no square is reached twice (one piece per square, a ray stops at the
    # first piece), so counting the set bits of every channel counts attackers.
    squares = t.unpack[torch.cat([hits, reached], dim=1).long()].view(n, -1, BOARD_SIZE)
    with torch.autocast(pieces.device.type, enabled=False):
        return t.side @ squares


def encode_planes(state: StateTensors, max_moves: int, attack_planes: bool = False
                  ) -> torch.Tensor:
    """The float32 planes [N, 46 or 50, 9, 9] of a state batch, on the batch's device."""
    if max_moves < 1:
        raise ValueError(f"max_moves must be >= 1, got {max_moves!r}")
    board = state.board.long()
    n = board.shape[0]
    if board.shape != (n, BOARD_SIZE):
        raise ValueError(f"board must have shape [N, {BOARD_SIZE}], got {list(board.shape)}")
    device = board.device
    # One write per (position, square): the piece's plane gets 1, an empty square writes 0
    # into plane 0 at its own square, which nothing else writes.
    plane = torch.where(board > 0, board - 1, 13 - board).clamp_(0, PIECE_PLANES - 1)
    pieces = torch.zeros(n, PIECE_PLANES, BOARD_SIZE, device=device)
    pieces.scatter_(1, plane.unsqueeze(1), (board != 0).float().unsqueeze(1))

    hand_max = torch.tensor(HAND_MAX, dtype=torch.float32, device=device)
    scalars = torch.cat(
        [
            (state.hands.float() / hand_max).reshape(n, 14),
            state.color.float().unsqueeze(1),
            state.ply.float().unsqueeze(1) / max_moves,
            state.repetition.float().unsqueeze(1) / float(MAX_REPETITION),
            state.in_check.float().unsqueeze(1),
        ],
        dim=1,
    )
    parts = [pieces, scalars.unsqueeze(2).expand(n, SCALAR_PLANES, BOARD_SIZE)]
    if attack_planes:
        attacks = attack_counts(pieces)
        value = _attack_tables(device).value[board + 14]
        attacked = torch.stack([torch.where(board > 0, value, 0.0) * (attacks[:, 1] > 0),
                                torch.where(board < 0, value, 0.0) * (attacks[:, 0] > 0)], dim=1)
        parts += [attacks / 4.0, attacked]
    return torch.cat(parts, dim=1).view(n, num_planes(attack_planes), BOARD_SIDE, BOARD_SIDE)


def legal_mask(
    offsets: np.ndarray | torch.Tensor,
    actions: np.ndarray | torch.Tensor,
    n: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The bool mask [n, NUM_ACTIONS] of CSR legal actions.

    Row i's legal actions are actions[offsets[i]:offsets[i + 1]].
    """
    offsets_t = torch.as_tensor(offsets, device=device).long()
    actions_t = torch.as_tensor(actions, device=device).long()
    if offsets_t.shape != (n + 1,):
        raise ValueError(f"legal offsets must have shape [{n + 1}], got {list(offsets_t.shape)}")
    counts = offsets_t[1:] - offsets_t[:-1]
    rows = torch.repeat_interleave(torch.arange(n, device=device), counts,
                                   output_size=actions_t.shape[0])
    mask = torch.zeros(n * NUM_ACTIONS, dtype=torch.bool, device=device)
    mask[rows * NUM_ACTIONS + actions_t] = True
    return mask.view(n, NUM_ACTIONS)


def gather_csr(
    offsets: torch.Tensor, actions: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR (offsets, actions) of the selected `rows` of a CSR batch, on its device."""
    offsets = offsets.long()
    starts = offsets[rows]
    counts = offsets[rows + 1] - starts
    new_offsets = torch.zeros(rows.shape[0] + 1, dtype=torch.long, device=offsets.device)
    torch.cumsum(counts, 0, out=new_offsets[1:])
    total = int(new_offsets[-1])
    # Position j of the output row r reads actions[starts[r] + j].
    shift = torch.repeat_interleave(starts - new_offsets[:-1], counts, output_size=total)
    positions = shift + torch.arange(total, device=offsets.device)
    return new_offsets, actions[positions]
