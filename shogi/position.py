"""`Position`: a game in progress on top of cshogi, with its full history and our rule semantics."""

from __future__ import annotations

import cshogi
import numpy as np

from shogi.actions import MOVE16_TO_ACTION, action_to_move
from shogi.compact import (
    BOARD_SIZE,
    CSHOGI_PIECE_TO_CODE,
    PIECE_SYMBOLS,
    SQUARE_TO_INDEX,
    CompactState,
    perspective_board,
    perspective_hands,
)
from shogi.errors import GameOverError, IllegalMoveError
from shogi.moves import MOVE16_MASK, Color, Move
from shogi.records import to_csa, to_kif
from shogi.rules import Outcome, judge
from shogi.sfen import STARTING_SFEN, validate_sfen

PLY_LIMIT = int(np.iinfo(np.int16).max)
"""The largest ply the compact state can carry (int16)."""

# cshogi's declaration rule constant (27 points); older cshogi only knew this rule.
_LAW_27 = getattr(cshogi, "LAW_27", None)


def impasse_declaration_wins(board: cshogi.Board) -> bool:
    """Whether the side to move on `board` may declare and win by the 27-point impasse rule."""
    return bool(board.is_nyugyoku() if _LAW_27 is None else board.is_nyugyoku(_LAW_27))


class Position:
    """A shogi position plus the moves that led to it from a given start.

    `Position()` is the standard start; `Position(sfen)` starts anywhere (validated). The
    history decides repetitions (sennichite at the 4th occurrence, perpetual check), and
    `max_moves` (plies since the start given) optionally caps the game.
    """

    def __init__(self, sfen: str | None = None, *, max_moves: int | None = None,
                 impasse: bool = False) -> None:
        if max_moves is not None and (isinstance(max_moves, bool) or int(max_moves) < 1):
            raise ValueError(f"max_moves must be a positive number of plies, got {max_moves!r}")
        self._start_sfen = STARTING_SFEN if sfen is None else validate_sfen(sfen)
        self._max_moves = None if max_moves is None else int(max_moves)
        self._impasse = bool(impasse)
        self._board = cshogi.Board(self._start_sfen)
        self._moves: list[Move] = []
        key = self._board.zobrist_hash()
        # Per ply k (0 = the start): position key and whether the side to move is in check.
        self._hashes: list[int] = [key]
        self._checks: list[bool] = [bool(self._board.is_check())]
        self._seen: dict[int, int] = {key: 1}
        self._forget_cache()

    @classmethod
    def from_sfen(cls, sfen: str, *, max_moves: int | None = None,
                  impasse: bool = False) -> Position:
        return cls(sfen, max_moves=max_moves, impasse=impasse)

    def _forget_cache(self) -> None:
        self._legal: list[int] | None = None
        self._outcome: Outcome | None = None
        self._outcome_known = False

    # ------------------------------------------------------------------ state

    def sfen(self) -> str:
        return str(self._board.sfen())

    @property
    def start_sfen(self) -> str:
        """The SFEN this game started from."""
        return self._start_sfen

    @property
    def turn(self) -> Color:
        return Color(self._board.turn)

    @property
    def ply(self) -> int:
        """Plies played since the start position given."""
        return len(self._moves)

    @property
    def max_moves(self) -> int | None:
        return self._max_moves

    @property
    def impasse(self) -> bool:
        """Whether the 27-point impasse declaration rule is enabled."""
        return self._impasse

    @property
    def moves(self) -> list[Move]:
        """The moves played since the start position (a copy)."""
        return list(self._moves)

    def piece_at(self, square: int) -> str | None:
        """SFEN symbol of the piece on `square` ("P", "+b", ...), or None when empty."""
        if not 0 <= square < BOARD_SIZE:
            raise ValueError(f"square must be 0..{BOARD_SIZE - 1}, got {square!r}")
        code = int(CSHOGI_PIECE_TO_CODE[self._board.piece(square)])
        if code == 0:
            return None
        symbol = PIECE_SYMBOLS[abs(code) - 1]
        return symbol if code > 0 else symbol.lower()

    def is_check(self) -> bool:
        return self._checks[-1]

    def is_checkmate(self) -> bool:
        return self._checks[-1] and not self._legal_ints()

    def repetition_count(self) -> int:
        """Earlier occurrences of the current (board, both hands, side to move) in this game."""
        return self._seen[self._hashes[-1]] - 1

    def outcome(self) -> Outcome | None:
        """The result if the game has ended here, else None."""
        if not self._outcome_known:
            self._outcome = judge(
                self.turn, len(self._legal_ints()), self._checks[-1], self.repetition_count(),
                self._hashes, self._checks,
                self._impasse and impasse_declaration_wins(self._board),
                self.ply, self._max_moves,
            )
            self._outcome_known = True
        return self._outcome

    def is_game_over(self) -> bool:
        return self.outcome() is not None

    # ------------------------------------------------------------------ moves

    def _legal_ints(self) -> list[int]:
        if self._legal is None:
            self._legal = list(self._board.legal_moves)
        return self._legal

    def legal_moves(self) -> list[Move]:
        """Every legal move, promotions and non-promotions alike; [] once the game is over."""
        if self.outcome() is not None:
            return []
        return [Move(m) for m in self._legal_ints()]

    def legal_actions(self) -> np.ndarray:
        """The legal moves as sorted int16 action indices (see `shogi.actions`)."""
        if self.outcome() is not None:
            return np.zeros(0, dtype=np.int16)
        return self._actions(self._legal_ints())

    def _actions(self, moves: list[int]) -> np.ndarray:
        """cshogi moves of the side to move -> sorted int16 action indices."""
        move16 = np.asarray(moves, dtype=np.int64) & MOVE16_MASK
        return np.sort(MOVE16_TO_ACTION[int(self.turn), move16])

    def repeating_actions(self) -> np.ndarray:
        """The legal actions (sorted int16, as `legal_actions`) whose move leads to a
        position that already occurred in this game."""
        if self.outcome() is not None:
            return np.zeros(0, dtype=np.int16)
        board = self._board
        repeating = []
        for move in self._legal_ints():
            board.push(move)
            if board.zobrist_hash() in self._seen:
                repeating.append(move)
            board.pop()
        return self._actions(repeating)

    def mate_in_one(self) -> Move | None:
        """A legal move that mates at once, or None. Uses cshogi's 1-ply mate search, which
        assumes the side to move is not in check; in check, the few legal replies are tried."""
        if self.outcome() is not None:
            return None
        board = self._board
        if self._checks[-1]:
            candidates = self._legal_ints()
        else:
            found = int(board.mate_move_in_1ply())
            candidates = [found] if found in self._legal_ints() else []
        for move in candidates:
            board.push(move)
            mates = board.is_check() and len(board.legal_moves) == 0
            board.pop()
            if mates:
                return Move(move)
        return None

    def push(self, move: Move) -> None:
        """Play `move`. IllegalMoveError / GameOverError leave the position unchanged."""
        if not isinstance(move, Move):
            raise TypeError(f"push expects a Move, got {move!r} (use push_usi for strings)")
        self._push(move, repr(move.usi()))

    def push_usi(self, usi: str) -> Move:
        """Play a USI move (`7g7f`, `8h2b+`, `P*5e`) and return it."""
        return self._push(Move.from_usi(usi), repr(usi))

    def push_action(self, action: int) -> Move:
        """Play an action index (side to move's perspective) and return its move."""
        try:
            move = action_to_move(action, self.turn)
        except IllegalMoveError as exc:
            raise IllegalMoveError(f"{exc} (position {self.sfen()!r})") from None
        return self._push(move, f"action {action!r} ({move.usi()})")

    def _push(self, move: Move, what: str) -> Move:
        outcome = self.outcome()
        if outcome is not None:
            raise GameOverError(f"cannot play {what} in {self.sfen()!r}: the game is over "
                                f"({outcome.reason.value})")
        full = int(self._board.move_from_move16(move.move16))
        if full not in self._legal_ints():
            raise IllegalMoveError(f"illegal move {what} in position {self.sfen()!r}")
        board = self._board
        board.push(full)
        played = Move(full)
        self._moves.append(played)
        key = board.zobrist_hash()
        self._hashes.append(key)
        self._checks.append(bool(board.is_check()))
        self._seen[key] = self._seen.get(key, 0) + 1
        self._forget_cache()
        return played

    def pop(self) -> Move:
        """Take back the last move and return it."""
        if not self._moves:
            raise IndexError(f"pop from a position with no moves played since {self._start_sfen!r}")
        key = self._hashes.pop()
        self._checks.pop()
        if self._seen[key] == 1:
            del self._seen[key]
        else:
            self._seen[key] -= 1
        self._board.pop()
        self._forget_cache()
        return self._moves.pop()

    def copy(self) -> Position:
        """An independent copy, history included."""
        other = Position.__new__(Position)
        other._start_sfen = self._start_sfen
        other._max_moves = self._max_moves
        other._impasse = self._impasse
        # Replaying keeps the copy's undo history intact on every cshogi version.
        other._board = cshogi.Board(self._start_sfen)
        for move in self._moves:
            other._board.push(move.cshogi_move)
        other._moves = list(self._moves)
        other._hashes = list(self._hashes)
        other._checks = list(self._checks)
        other._seen = dict(self._seen)
        other._forget_cache()
        return other

    # ------------------------------------------------------------------ views

    def compact(self) -> CompactState:
        """This position as a compact state (a batch of 1), from the side to move's view."""
        if self.ply > PLY_LIMIT:
            raise OverflowError(f"ply {self.ply} does not fit the compact state (max {PLY_LIMIT})")
        black_board = np.zeros((1, BOARD_SIZE), dtype=np.int8)
        black_board[0, SQUARE_TO_INDEX[0]] = CSHOGI_PIECE_TO_CODE[np.asarray(self._board.pieces)]
        color = np.array([int(self.turn)], dtype=np.uint8)
        hands = np.asarray(self._board.pieces_in_hand, dtype=np.uint8)[None]
        return CompactState(
            board=perspective_board(black_board, color),
            hands=perspective_hands(hands, color),
            color=color,
            ply=np.array([self.ply], dtype=np.int16),
            repetition=np.array([min(self.repetition_count(), 255)], dtype=np.uint8),
            in_check=np.array([self._checks[-1]], dtype=np.uint8),
        )

    def to_kif(self, names: tuple[str, str] = ("Black", "White")) -> str:
        """The game so far as KIF text (see `shogi.records.to_kif`)."""
        return to_kif(self, names)

    def to_csa(self, names: tuple[str, str] = ("Black", "White")) -> str:
        """The game so far as CSA text (see `shogi.records.to_csa`)."""
        return to_csa(self, names)

    def history_keys(self) -> tuple[list[int], list[bool]]:
        """Per ply k since the start (k = 0 is the start): the position key (cshogi's Zobrist
        hash of board, hands and side to move) and whether the side to move was in check.
        Copies: what repetition and perpetual check are judged on (`shogi.rules.judge`)."""
        return list(self._hashes), list(self._checks)

    def cshogi_history(self) -> list[int]:
        """The cshogi move ints played since the start (for records and replays)."""
        return [m.cshogi_move for m in self._moves]

    def __repr__(self) -> str:
        return f"Position({self.sfen()!r})"
