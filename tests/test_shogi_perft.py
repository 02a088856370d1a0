"""Perft: legal move generation counted to a fixed depth against published figures."""

from __future__ import annotations

import pytest

from shogi import Position

MATSURI = "l6nl/5+P1gk/2np1S3/p1p4Pp/3P2Sp1/1PPb2P1P/P5GS1/R8/LN4bKL w RGgsn5p 1"
PAWN_DROP_MATE = "7lk/9/8S/9/9/9/9/7L1/8K b P 1"


def perft(position: Position, depth: int) -> int:
    """Leaf count at `depth`, counting the last ply in bulk (the length of the move list)."""
    moves = position.legal_moves()
    if depth == 1:
        return len(moves)
    total = 0
    for move in moves:
        position.push(move)
        total += perft(position, depth - 1)
        position.pop()
    return total


@pytest.mark.parametrize(("sfen", "expected"), [
    (None, [30, 900, 25_470, 719_731]),
    pytest.param(MATSURI, [207, 28_684, 4_809_015], marks=pytest.mark.slow),  # ~9 s
    (PAWN_DROP_MATE, [85, 639, 10_786]),
], ids=["start", "matsuri", "pawn-drop-mate"])
def test_perft(sfen: str | None, expected: list[int]) -> None:
    position = Position(sfen)
    before = position.sfen()
    for depth, count in enumerate(expected, start=1):
        assert perft(position, depth) == count, f"depth {depth}"
    assert position.sfen() == before and position.ply == 0
