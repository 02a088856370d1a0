"""`SearchBoard`: a game's position walked forward and back by a tree search.

A tree search plays a few plies ahead of a real game thousands of times per move. `Position`
validates every move and keeps its own caches; this is the lean version for a search: one
cshogi board and the game's position keys and check flags, extended by the path walked, so that
repetition (the 4th occurrence, perpetual check) is judged against the real game's history plus
the path, by `shogi.rules.judge` exactly as for a Position. Moves are cshogi move ints taken from
`legal_moves()`: nothing is validated again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import chain

import cshogi
import numpy as np

from shogi.compact import (
    BOARD_SIZE,
    CSHOGI_PIECE_TO_CODE,
    HAND_SIZE,
    SQUARE_TO_INDEX,
    CompactState,
    perspective_board,
    perspective_hands,
)
from shogi.moves import Color
from shogi.position import Position, impasse_declaration_wins
from shogi.rules import Outcome, judge

_COLORS = (Color.BLACK, Color.WHITE)


StateRow = tuple[bytes, list[list[int]], int, int, int, bool]
"""One position's raw compact-state data as read off the board (a plain tuple: it is built per
leaf): cshogi pieces by square (bytes: a batch becomes one array in one call), hands
[colour][P L N S G B R], side to move, ply, repetition, in check. `compact_rows` turns a batch
of them into a CompactState."""


class SearchBoard:
    """The position of `position`, walked with `push` / `pop` of legal cshogi moves."""

    def __init__(self, position: Position) -> None:
        board = cshogi.Board(position.start_sfen)
        for move in position.cshogi_history():
            board.push(move)
        self._board = board
        self.hashes, self.checks = position.history_keys()
        self._seen: Counter[int] = Counter(self.hashes)
        self.max_moves = position.max_moves
        self.impasse = position.impasse

    @property
    def ply(self) -> int:
        """Plies since the game's start position (as `Position.ply`)."""
        return len(self.hashes) - 1

    @property
    def turn(self) -> int:
        """The side to move: 0 Black, 1 White."""
        return int(self._board.turn)

    @property
    def key(self) -> int:
        return self.hashes[-1]

    @property
    def in_check(self) -> bool:
        return self.checks[-1]

    def repetition(self) -> int:
        """Earlier occurrences of the current position in the game and the path walked."""
        return self._seen[self.hashes[-1]] - 1

    def push(self, move: int) -> None:
        board = self._board
        board.push(move)
        key = board.zobrist_hash()
        self.hashes.append(key)
        self.checks.append(bool(board.is_check()))
        self._seen[key] += 1

    def pop(self) -> None:
        self._seen[self.hashes.pop()] -= 1
        self.checks.pop()
        self._board.pop()

    def legal_moves(self) -> list[int]:
        """Every legal cshogi move of the side to move (ignoring whether the game is over)."""
        return list(self._board.legal_moves)

    def outcome(self, num_legal_moves: int) -> Outcome | None:
        """The game's result here by `shogi.rules.judge`, or None while it goes on."""
        return judge(
            _COLORS[self.turn], num_legal_moves, self.checks[-1], self.repetition(),
            self.hashes, self.checks, self.impasse and impasse_declaration_wins(self._board),
            self.ply, self.max_moves)

    def may_mate(self, plies: int) -> bool:
        """Whether cshogi's mate searches see a mate within `plies` plies for the side to move
        (always True in check, where they do not apply): a quick test before the exact
        `shogi.tactics.forced_mate`, which answers None wherever this is False."""
        board = self._board
        if self.checks[-1]:
            return True
        if board.mate_move_in_1ply():
            return True
        return plies >= 3 and bool(board.mate_move(plies))

    def winning_mate_in_one(self) -> int:
        """A cshogi move that checkmates at once and so wins by the game's rules, or 0.

        cshogi's 1-ply mate search assumes the side to move is not in check: in check this
        answers 0. A mate into a position that occurred before is not taken (there the
        repetition rules decide first); the caller plays on as usual then.
        """
        board = self._board
        if self.checks[-1]:
            return 0
        move = int(board.mate_move_in_1ply())
        if not move:
            return 0
        board.push(move)
        try:
            mates = (bool(board.is_check()) and not any(True for _ in board.legal_moves)
                     and self._seen.get(board.zobrist_hash(), 0) == 0)
        finally:
            board.pop()
        return move if mates else 0

    @staticmethod
    def usi(moves: Sequence[int]) -> list[str]:
        """USI strings of cshogi moves."""
        return [cshogi.move_to_usi(m) for m in moves]

    def row(self) -> StateRow:
        board = self._board
        hashes = self.hashes
        return (bytes(board.pieces), board.pieces_in_hand, board.turn, len(hashes) - 1,
                self._seen[hashes[-1]] - 1, self.checks[-1])


def compact_rows(rows: Sequence[StateRow]) -> CompactState:
    """The compact states of `rows` (one batch), as `Position.compact` builds them one by one."""
    n = len(rows)
    pieces_rows, hand_rows, colors, plies, repetitions, checks = zip(*rows, strict=True)
    pieces = np.frombuffer(b"".join(pieces_rows), dtype=np.uint8).reshape(n, BOARD_SIZE)
    black_board = np.zeros((n, BOARD_SIZE), dtype=np.int8)
    black_board[:, SQUARE_TO_INDEX[0]] = CSHOGI_PIECE_TO_CODE[pieces]
    color = np.array(colors, dtype=np.uint8)
    hands = np.fromiter(chain.from_iterable(chain.from_iterable(hand_rows)), dtype=np.uint8,
                        count=n * 2 * HAND_SIZE).reshape(n, 2, HAND_SIZE)
    return CompactState(
        board=perspective_board(black_board, color),
        hands=perspective_hands(hands, color),
        color=color,
        ply=np.array(plies, dtype=np.int16),
        repetition=np.minimum(np.array(repetitions, dtype=np.int64), 255).astype(np.uint8),
        in_check=np.array(checks, dtype=np.uint8),
    )
