"""Compact state -> the 46 input planes and the legal-action mask, vectorised in torch.

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
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from shogi import HAND_MAX, NUM_ACTIONS, CompactState

NUM_PLANES = 46
PIECE_PLANES = 28  # 14 piece kinds x 2 sides


@dataclass(frozen=True)
class StateTensors:
    """A batch of compact states as torch tensors on one device (dtypes as in CompactState)."""

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
        return StateTensors(self.board[rows], self.hands[rows], self.color[rows],
                            self.ply[rows], self.repetition[rows], self.in_check[rows])


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

    return StateTensors(move(state.board), move(state.hands), move(state.color),
                        move(state.ply), move(state.repetition), move(state.in_check))


def encode_planes(state: StateTensors, max_moves: int) -> torch.Tensor:
    """The float32 planes [N, 46, 9, 9] of a state batch, on the batch's device."""
    if max_moves < 1:
        raise ValueError(f"max_moves must be >= 1, got {max_moves!r}")
    board = state.board.long()
    n = board.shape[0]
    if board.shape != (n, 81):
        raise ValueError(f"board must have shape [N, 81], got {list(board.shape)}")
    device = board.device
    # One write per (position, square): the piece's plane gets 1, an empty square writes 0
    # into plane 0 at its own square, which nothing else writes.
    plane = torch.where(board > 0, board - 1, 13 - board).clamp_(0, PIECE_PLANES - 1)
    pieces = torch.zeros(n, PIECE_PLANES, 81, device=device)
    pieces.scatter_(1, plane.unsqueeze(1), (board != 0).float().unsqueeze(1))

    hand_max = torch.tensor(HAND_MAX, dtype=torch.float32, device=device)
    scalars = torch.cat(
        [
            (state.hands.float() / hand_max).reshape(n, 14),
            state.color.float().unsqueeze(1),
            state.ply.float().unsqueeze(1) / max_moves,
            state.repetition.float().unsqueeze(1) / 3.0,
            state.in_check.float().unsqueeze(1),
        ],
        dim=1,
    )
    planes = torch.cat([pieces, scalars.unsqueeze(2).expand(n, NUM_PLANES - PIECE_PLANES, 81)],
                       dim=1)
    return planes.view(n, NUM_PLANES, 9, 9)


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
