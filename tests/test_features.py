"""Feature planes and legal masks: chosen planes of hand-built positions, a slow reference,
attack maps checked against cshogi's move generator."""

from __future__ import annotations

import cshogi
import numpy as np
import pytest
import torch

from keisei_ray.bench.learner import bench_features
from learner.features import (
    ATTACK_PLANES,
    HAND_MAX,
    NUM_PLANES,
    encode_planes,
    gather_csr,
    legal_mask,
    to_tensors,
)
from shogi import NUM_ACTIONS, CompactState, Position
from shogi.compact import PIECE_SLIDES, PIECE_STEPS, PIECE_VALUE, SQUARE_TO_INDEX


def hand_built() -> CompactState:
    state = CompactState.empty(2)
    # Row 0: Black to move, in check, seen twice before, ply 100.
    state.board[0, 60] = 1  # own pawn, row 6 col 6
    state.board[0, 76] = 8  # own king, row 8 col 4
    state.board[0, 40] = 14  # own dragon (+R)
    state.board[0, 4] = -8  # opponent king, row 0 col 4
    state.board[0, 30] = -9  # opponent tokin (+P), row 3 col 3
    state.hands[0, 0] = [2, 0, 0, 0, 1, 0, 1]  # own: 2 P, 1 G, 1 R
    state.hands[0, 1] = [18, 0, 0, 4, 0, 2, 0]  # opponent: 18 P, 4 S, 2 B
    state.ply[0], state.repetition[0], state.in_check[0] = 100, 2, 1
    # Row 1: an empty board, White to move.
    state.color[1] = 1
    return state


def test_chosen_planes_of_a_hand_built_position() -> None:
    planes = encode_planes(to_tensors(hand_built()), max_moves=512)
    assert planes.shape == (2, NUM_PLANES, 9, 9)
    assert planes.dtype == torch.float32
    p = planes[0]
    assert p[0, 6, 6] == 1  # pawn: plane 0
    assert p[7, 8, 4] == 1  # king: plane 7
    assert p[13, 4, 4] == 1  # +R: plane 13
    assert p[21, 0, 4] == 1  # opponent king: plane 14 + 8 - 1
    assert p[22, 3, 3] == 1  # opponent +P: plane 14 + 9 - 1
    assert p[:28].sum() == 5  # nothing else on the board planes
    expected_hand = {28: 2 / 18, 32: 1 / 4, 34: 1 / 2, 35: 1.0, 38: 1.0, 40: 1.0}
    for plane in range(28, 42):
        assert torch.all(p[plane] == expected_hand.get(plane, 0.0)), plane
    assert torch.all(p[42] == 0)  # Black to move
    assert torch.allclose(p[43], torch.tensor(100 / 512))
    assert torch.allclose(p[44], torch.tensor(2 / 3))
    assert torch.all(p[45] == 1)
    # White to move on an empty board: only the colour plane is set.
    assert torch.all(planes[1, 42] == 1)
    assert planes[1].sum() == 81


def reference_planes(state: CompactState, max_moves: int) -> np.ndarray:
    """Square by square, straight from the layout table."""
    n = len(state)
    out = np.zeros((n, NUM_PLANES + ATTACK_PLANES, 9, 9), dtype=np.float32)
    for i in range(n):
        for sq in range(81):
            code = int(state.board[i, sq])
            if code:
                plane = code - 1 if code > 0 else 14 - code - 1
                out[i, plane, sq // 9, sq % 9] = 1
        for side in range(2):
            for piece in range(7):
                out[i, 28 + 7 * side + piece] = state.hands[i, side, piece] / HAND_MAX[piece]
        out[i, 42] = state.color[i]
        out[i, 43] = state.ply[i] / max_moves
        out[i, 44] = state.repetition[i] / 3
        out[i, 45] = state.in_check[i]
        counts = reference_attacks(state.board[i])
        out[i, 46:48] = counts.reshape(2, 9, 9) / 4
        for sq in range(81):
            code = int(state.board[i, sq])
            side = 0 if code > 0 else 1  # whose piece: the mover's (plane 48) or not (49)
            if code and counts[1 - side, sq] > 0:
                out[i, 48 + side, sq // 9, sq % 9] = PIECE_VALUE[abs(code)] / 10
    return out


def reference_attacks(board: np.ndarray) -> np.ndarray:
    """[2, 81] attacker counts (mover's, opponent's), piece by piece and ray by ray."""
    counts = np.zeros((2, 81))
    for sq in range(81):
        code = int(board[sq])
        if not code:
            continue
        side, sign = (0, 1) if code > 0 else (1, -1)  # the opponent moves down the board
        row, col = divmod(sq, 9)
        for dr, dc in PIECE_STEPS.get(abs(code), ()):
            r, c = row + sign * dr, col + sign * dc
            if 0 <= r < 9 and 0 <= c < 9:
                counts[side, r * 9 + c] += 1
        for dr, dc in PIECE_SLIDES.get(abs(code), ()):
            r, c = row + sign * dr, col + sign * dc
            while 0 <= r < 9 and 0 <= c < 9:
                counts[side, r * 9 + c] += 1
                if board[r * 9 + c]:
                    break
                r, c = r + sign * dr, c + sign * dc
    return counts


def random_states(n: int, seed: int) -> CompactState:
    rng = np.random.default_rng(seed)
    state = CompactState.empty(n)
    state.board[:] = rng.integers(-14, 15, size=(n, 81)) * (rng.random((n, 81)) < 0.4)
    state.hands[:] = rng.integers(0, np.array(HAND_MAX) + 1, size=(n, 2, 7))
    state.color[:] = rng.integers(0, 2, n)
    state.ply[:] = rng.integers(0, 512, n)
    state.repetition[:] = rng.integers(0, 4, n)
    state.in_check[:] = rng.integers(0, 2, n)
    return state


def test_matches_the_square_by_square_reference() -> None:
    state = random_states(64, seed=1)
    expected = reference_planes(state, 300)
    planes = encode_planes(to_tensors(state), max_moves=300, attack_planes=True).numpy()
    np.testing.assert_allclose(planes, expected, rtol=0, atol=1e-7)
    # Without the attack planes: DESIGN.md's 46, the same numbers.
    plain = encode_planes(to_tensors(state), max_moves=300).numpy()
    np.testing.assert_array_equal(plain, planes[:, :NUM_PLANES])


def attacks_of(state: CompactState) -> np.ndarray:
    """[N, 2, 81] attacker counts (mover's, opponent's) as the planes 46-47 carry them."""
    planes = encode_planes(to_tensors(state), max_moves=512, attack_planes=True)[:, 46:48] * 4
    return planes.reshape(len(state), 2, 81).numpy()


def test_attacks_match_cshogi_move_generation() -> None:
    """Squares the mover attacks (not holding its own piece) are exactly the destinations of
    its pseudo-legal board moves, and the opponent attacks the mover's king iff in check.
    (In check cshogi generates evasions only, so those positions check the king alone.)"""
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(6):
        position = Position()
        while not position.is_game_over() and position.ply < 160:
            state = position.compact()
            board = state.board[0]
            counts = attacks_of(state)[0]
            king = int(np.flatnonzero(board == 8)[0])
            assert (counts[1, king] > 0) == bool(state.in_check[0]), position.sfen()
            if not state.in_check[0]:
                to_index = SQUARE_TO_INDEX[int(state.color[0])]
                destinations = {int(to_index[cshogi.move_to(m)])
                                for m in cshogi.Board(position.sfen()).pseudo_legal_moves
                                if not cshogi.move_is_drop(m)}
                attacked = {sq for sq in range(81) if counts[0, sq] > 0 and board[sq] <= 0}
                assert destinations == attacked, position.sfen()
                checked += 1
            moves = position.legal_moves()
            position.push(moves[int(rng.integers(len(moves)))])
    assert checked > 500


def test_hand_built_attacks() -> None:
    state = hand_built()
    own, opponent = attacks_of(state)[0].reshape(2, 9, 9)
    assert own[5, 6] == 1  # the pawn at (6, 6) attacks the square in front
    assert own[4, 0] == 1 and own[4, 8] == 1  # the dragon's rook rays on row 4 reach both edges
    assert own[3, 4] == 1 and own[0, 4] == 1  # up column 4, ending on the opponent king
    assert own[3, 3] == 1  # the dragon's diagonal step reaches the tokin
    assert opponent[4, 3] == 1 and opponent[4, 4] == 1  # the tokin moves down the board
    assert opponent[5, 6] == 0
    planes = encode_planes(to_tensors(state), max_moves=512, attack_planes=True)[0]
    assert planes[48, 4, 4] == pytest.approx(1.2)  # the dragon (value 12) is attacked
    assert planes[49, 3, 3] == pytest.approx(0.7)  # and attacks the tokin (value 7)
    assert planes[48].count_nonzero() == 1 and planes[49].count_nonzero() == 1  # kings: 0


def test_bad_max_moves_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_moves"):
        encode_planes(to_tensors(hand_built()), max_moves=0)


def test_legal_mask_from_csr() -> None:
    offsets = np.array([0, 3, 3, 4], dtype=np.int32)
    actions = np.array([3, 100, NUM_ACTIONS - 1, 0], dtype=np.int16)
    mask = legal_mask(offsets, actions, 3)
    assert mask.shape == (3, NUM_ACTIONS) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [3, 0, 1]
    assert mask[0, [3, 100, NUM_ACTIONS - 1]].all()
    assert mask[2, 0]
    with pytest.raises(ValueError, match="legal offsets must have shape"):
        legal_mask(offsets, actions, 4)


def test_gather_csr_selects_rows_in_order() -> None:
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 6, size=20)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    actions = rng.integers(0, NUM_ACTIONS, size=int(offsets[-1]))
    rows = np.array([5, 0, 19, 5, 3])
    new_offsets, new_actions = gather_csr(torch.from_numpy(offsets), torch.from_numpy(actions),
                                          torch.from_numpy(rows))
    expected = [actions[offsets[r]:offsets[r + 1]] for r in rows]
    assert new_offsets.tolist() == [0, *np.cumsum([len(e) for e in expected]).tolist()]
    assert new_actions.tolist() == np.concatenate(expected).tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    state = random_states(32, seed=3)
    cpu = encode_planes(to_tensors(state), max_moves=512, attack_planes=True)
    gpu = encode_planes(to_tensors(state, "cuda"), max_moves=512, attack_planes=True)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)
    offsets = np.array([0, 2, 2, 3], dtype=np.int32)
    actions = np.array([5, 7, 9], dtype=np.int16)
    on_gpu = legal_mask(offsets, actions, 3, "cuda")
    assert torch.equal(on_gpu.cpu(), legal_mask(offsets, actions, 3))


def test_features_benchmark_returns_its_figures() -> None:
    for attack_planes in (False, True):
        figures = bench_features(64, num_games=4, steps=4, repeats=1,
                                 attack_planes=attack_planes)
        assert figures["batch"] == 64 and figures["positions per s"] > 0
