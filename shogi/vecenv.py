"""`VecEnv`: many games stepped at once, emitting compact states and legal actions in CSR form.

Per game, each step does only what cshogi must do (push the move, hash, in-check, the legal
move list). Everything else runs as a handful of numpy calls over all games: the board and
hands are updated incrementally from the moves themselves (no per-game board read-back), and
legal moves become sorted action rows through one table gather and one sort.

Just over 400 lines: the env's state arrays and the step that advances them stay together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cshogi
import numpy as np

from shogi.actions import ACTION_TO_MOVE16, MOVE16_TO_ACTION, NUM_ACTIONS
from shogi.compact import (
    BOARD_SIZE,
    CSHOGI_PIECE_TO_CODE,
    PROMOTE_CODE,
    SQUARE_TO_INDEX,
    UNPROMOTE_CODE,
    CompactState,
    perspective_board,
    perspective_hands,
)
from shogi.errors import IllegalMoveError
from shogi.moves import CSHOGI_TYPE_TO_HAND, MOVE16_MASK, Color
from shogi.position import PLY_LIMIT, Position, impasse_declaration_wins
from shogi.rules import SENNICHITE_REPETITIONS, Outcome, Termination, judge

# cshogi drop `from` field (80 + piece type) -> hand index P L N S G B R; -1 for board squares.
_DROP_FIELD_TO_HAND = np.full(128, -1, dtype=np.intp)
for _piece_type, _hand in CSHOGI_TYPE_TO_HAND.items():
    _DROP_FIELD_TO_HAND[80 + _piece_type] = _hand
_MOVE16_TO_ACTION_FLAT = MOVE16_TO_ACTION.astype(np.int32).ravel()  # [colour << 15 | move16]
_SQUARE_TO_BLACK_INDEX = np.zeros(128, dtype=np.intp)
_SQUARE_TO_BLACK_INDEX[:BOARD_SIZE] = SQUARE_TO_INDEX[0]


MAX_GAMES = 100_000
"""Most games one VecEnv steps (keeps its int32 CSR sort keys from overflowing)."""


class _Game:
    """One slot's cshogi board and the history the repetition rules need."""

    __slots__ = ("board", "checks", "keys", "plies", "seen")

    def __init__(self, sfen: str, key: int, check: bool) -> None:
        self.board = cshogi.Board(sfen)
        self.keys = [key]  # position key after each ply, from the start
        self.checks = [check]  # side to move in check after each ply
        self.seen = {key: 1}  # occurrences of each key
        self.plies = 0


@dataclass
class Observation:
    """What the policy sees: N compact states and each game's legal actions as CSR rows."""

    state: CompactState
    legal_offsets: np.ndarray  # int32 [N + 1]: game i's actions are legal_actions[o[i]:o[i+1]]
    legal_actions: np.ndarray  # int16 [M]: each row sorted ascending, never empty

    def legal_row(self, i: int) -> np.ndarray:
        """The legal actions of game `i`."""
        return self.legal_actions[self.legal_offsets[i]:self.legal_offsets[i + 1]]

    def __len__(self) -> int:
        return len(self.state)


@dataclass
class FinishedGame:
    """A game that ended during a step (its slot was reset to the start position)."""

    slot: int
    outcome: Outcome
    plies: int
    final_state: CompactState  # batch of 1: the last position, before the reset
    usi_moves: list[str]  # the game's moves from the start position


@dataclass
class StepResult:
    """One step's results, per game slot, from the view of the side that just moved."""

    rewards: np.ndarray  # float32 [N]: +1 the move won the game, -1 it lost it, else 0
    terminated: np.ndarray  # bool [N]: the game ended with a result (win, loss or draw)
    truncated: np.ndarray  # bool [N]: the game hit max_moves (a draw, terminal for learning)
    finished: list[FinishedGame]


class VecEnv:
    """`num_games` games from the start position, stepped together; finished games restart.

    Deterministic: the same actions give the same everything. `seed` seeds `rng`, which
    `random_actions` draws from. `start_sfen` (default: the standard start) lets every game
    begin from another live position; plies and `max_moves` count from there.
    """

    def __init__(self, num_games: int, max_moves: int = 512, seed: int = 0, *,
                 impasse: bool = False, start_sfen: str | None = None) -> None:
        if isinstance(num_games, bool) or not 1 <= int(num_games) <= MAX_GAMES:
            raise ValueError(f"num_games must be 1..{MAX_GAMES}, got {num_games!r}")
        if isinstance(max_moves, bool) or not 1 <= int(max_moves) <= PLY_LIMIT:
            raise ValueError(f"max_moves must be 1..{PLY_LIMIT}, got {max_moves!r}")
        self.num_games = int(num_games)
        self.max_moves = int(max_moves)
        self.impasse = bool(impasse)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        start = Position(start_sfen, max_moves=self.max_moves, impasse=self.impasse)
        if start.is_game_over():
            raise ValueError(f"start position {start.sfen()!r} is already decided: "
                             f"{start.outcome()}")
        self.start_sfen = start.sfen()
        board = cshogi.Board(self.start_sfen)
        self._start_black_board = np.zeros(BOARD_SIZE, dtype=np.int8)
        self._start_black_board[SQUARE_TO_INDEX[0]] = CSHOGI_PIECE_TO_CODE[np.asarray(board.pieces)]
        self._start_hands = np.asarray(board.pieces_in_hand, dtype=np.uint8)
        self._start_color = int(board.turn)
        self._start_check = bool(board.is_check())
        self._start_legal = list(board.legal_moves)
        self._start_key = board.zobrist_hash()
        self._rows = np.arange(self.num_games)
        # CSR sort keys row * NUM_ACTIONS + action fit int32 (sorts twice as fast as int64).
        self._row_base = (self._rows * NUM_ACTIONS).astype(np.int32)
        self.reset()

    # ------------------------------------------------------------------ public

    def reset(self) -> Observation:
        """Restart every game from the start position."""
        n = self.num_games
        self._games = [self._new_game() for _ in range(n)]
        self._black_board = np.tile(self._start_black_board, (n, 1))
        self._hands = np.tile(self._start_hands, (n, 1, 1))  # indexed by colour
        self._color = np.full(n, self._start_color, dtype=np.uint8)
        self._ply = np.zeros(n, dtype=np.int16)
        self._repetition = np.zeros(n, dtype=np.uint8)
        self._in_check = np.full(n, self._start_check, dtype=np.uint8)
        moves = self._start_legal * n
        self._build_observation(moves, [len(self._start_legal)] * n)
        return self._observation

    def observe(self) -> Observation:
        """The current observation (the arrays are not reused by later steps)."""
        return self._observation

    def position(self, slot: int) -> Position:
        """Game `slot` as a Position (replayed from the start: O(plies))."""
        if not 0 <= slot < self.num_games:
            raise IndexError(f"slot {slot!r} is out of range 0..{self.num_games - 1}")
        position = Position(self.start_sfen, max_moves=self.max_moves, impasse=self.impasse)
        for move in self._games[slot].board.history:
            position.push_usi(cshogi.move_to_usi(move))
        return position

    def get_state(self) -> dict[str, Any]:
        """Every running game as its moves from the start, plus `rng`: what `set_state` takes.

        Plain values and numpy arrays only (small: two bytes per ply); the boards, histories and
        the observation are rebuilt by replaying the moves.
        """
        moves = [[cshogi.move16(m) for m in game.board.history] for game in self._games]
        return {
            "num_games": self.num_games,
            "max_moves": self.max_moves,
            "impasse": self.impasse,
            "start_sfen": self.start_sfen,
            "move_counts": np.array([len(m) for m in moves], dtype=np.int32),
            "moves": np.array([m for game in moves for m in game], dtype=np.uint16),
            "rng": self.rng.bit_generator.state,
        }

    def set_state(self, state: Mapping[str, Any]) -> Observation:
        """Restore what `get_state` returned: same games, same `rng`, same next observation.

        The env must have the same size, rules and start. Every move is checked while it is
        replayed; a bad state raises ValueError naming what is wrong and leaves the env as it was.
        """
        for key, mine in (("num_games", self.num_games), ("max_moves", self.max_moves),
                          ("impasse", self.impasse), ("start_sfen", self.start_sfen)):
            if state.get(key) != mine:
                raise ValueError(f"env state: {key} is {state.get(key)!r}, this env has {mine!r}")
        counts = np.asarray(state["move_counts"], dtype=np.int64)
        moves = np.asarray(state["moves"]).astype(np.int64)
        if counts.shape != (self.num_games,) or (counts < 0).any() or counts.sum() != len(moves):
            raise ValueError(f"env state: move_counts {counts.tolist()!r} do not fit "
                             f"{self.num_games} games and {len(moves)} moves")
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = dict(state["rng"])
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"env state: bad rng state ({exc})") from None
        games = [self._replay(slot, moves[end - n:end].tolist())
                 for slot, (n, end) in enumerate(zip(counts, np.cumsum(counts), strict=True))]

        legal = [list(game.board.legal_moves) for game in games]
        pieces = np.array([game.board.pieces for game in games], dtype=np.intp)
        black_board = np.zeros((self.num_games, BOARD_SIZE), dtype=np.int8)
        black_board[:, SQUARE_TO_INDEX[0]] = CSHOGI_PIECE_TO_CODE[pieces]
        self._games = games
        self._black_board = black_board
        self._hands = np.array([game.board.pieces_in_hand for game in games], dtype=np.uint8)
        self._color = np.array([game.board.turn for game in games], dtype=np.uint8)
        self._ply = np.array([game.plies for game in games], dtype=np.int16)
        self._repetition = np.array([min(game.seen[game.keys[-1]] - 1, 255) for game in games],
                                    dtype=np.uint8)
        self._in_check = np.array([game.checks[-1] for game in games], dtype=np.uint8)
        self.rng = rng
        self._build_observation([m for row in legal for m in row], [len(row) for row in legal])
        return self._observation

    def _replay(self, slot: int, moves: list[int]) -> _Game:
        """Game `slot` rebuilt from its 16-bit moves; it must still be running."""
        game = self._new_game()
        board = game.board
        for m16 in moves:
            move = board.move_from_move16(m16)
            if move not in board.legal_moves:
                raise ValueError(f"env state: move16 {m16} at ply {game.plies + 1} of game slot "
                                 f"{slot} is not legal in {board.sfen()!r}")
            board.push(move)
            key = board.zobrist_hash()
            game.seen[key] = game.seen.get(key, 0) + 1
            game.keys.append(key)
            game.checks.append(board.is_check())
            game.plies += 1
        count = len(board.legal_moves)
        repetition = game.seen[game.keys[-1]] - 1
        declares = self.impasse and impasse_declaration_wins(board)
        outcome = judge(Color(board.turn), count, game.checks[-1], repetition, game.keys,
                        game.checks, declares, game.plies, self.max_moves)
        if outcome is not None:
            raise ValueError(f"env state: game slot {slot} is already over after {game.plies} "
                             f"plies ({outcome.reason.value})")
        return game

    def random_actions(self) -> np.ndarray:
        """One uniformly random legal action per game, drawn from `rng`."""
        obs = self._observation
        counts = np.diff(obs.legal_offsets)
        picks = obs.legal_offsets[:-1] + (self.rng.random(self.num_games) * counts).astype(np.int64)
        return obs.legal_actions[picks]

    # Long by choice: the env's hot path, vectorised over games; splitting it would add copies.
    def step(self, actions: np.ndarray) -> StepResult:
        """Play one action per game. An illegal action raises IllegalMoveError, env unchanged."""
        actions = self._validate(actions)
        n = self.num_games
        mover = self._color.copy()
        move16 = ACTION_TO_MOVE16[mover.astype(np.intp), actions]
        self._apply_to_arrays(move16, mover)

        all_moves: list[int] = []
        counts = [0] * n
        repetition = [0] * n
        in_check = [False] * n
        ended: list[tuple[int, Outcome]] = []
        # The hot loop: only cshogi calls and list/dict bookkeeping, locals bound once.
        impasse, max_moves = self.impasse, self.max_moves
        start_legal, start_count = self._start_legal, len(self._start_legal)
        extend = all_moves.extend
        for i, (game, m16) in enumerate(zip(self._games, move16.tolist(), strict=True)):
            board = game.board
            board.push_move16(m16)
            key = board.zobrist_hash()
            seen = game.seen
            rep = seen.get(key, 0)
            seen[key] = rep + 1
            check = board.is_check()
            game.keys.append(key)
            game.checks.append(check)
            legal = board.legal_moves
            count = len(legal)
            game.plies += 1
            repetition[i] = rep
            in_check[i] = check
            declares = impasse and impasse_declaration_wins(board)
            if count == 0 or rep >= SENNICHITE_REPETITIONS or game.plies >= max_moves or declares:
                outcome = judge(Color(board.turn), count, check, rep, game.keys, game.checks,
                                declares, game.plies, max_moves)
                if outcome is not None:
                    # The slot restarts below; it offers the start position's moves already.
                    ended.append((i, outcome))
                    extend(start_legal)
                    counts[i] = start_count
                    continue
            extend(legal)
            counts[i] = count

        self._color ^= 1
        self._ply += 1
        self._repetition = np.minimum(np.array(repetition, dtype=np.int64), 255).astype(np.uint8)
        self._in_check = np.array(in_check, dtype=np.uint8)

        rewards = np.zeros(n, dtype=np.float32)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        finished: list[FinishedGame] = []
        if ended:
            slots = np.array([i for i, _ in ended], dtype=np.intp)
            final_states = self._state().take(slots)
            for row, (i, outcome) in enumerate(ended):
                if outcome.winner is not None:
                    rewards[i] = 1.0 if int(outcome.winner) == mover[i] else -1.0
                if outcome.reason is Termination.MAX_MOVES:
                    truncated[i] = True
                else:
                    terminated[i] = True
                game = self._games[i]
                finished.append(FinishedGame(
                    slot=i, outcome=outcome, plies=game.plies,
                    final_state=final_states.take([row]),
                    usi_moves=[cshogi.move_to_usi(m) for m in game.board.history],
                ))
                self._restart(i)
        self._build_observation(all_moves, counts)
        return StepResult(rewards, terminated, truncated, finished)

    # ------------------------------------------------------------------ internals

    def _validate(self, actions: np.ndarray) -> np.ndarray:
        acts = np.asarray(actions)
        if acts.shape != (self.num_games,) or not np.issubdtype(acts.dtype, np.integer):
            raise IllegalMoveError(f"expected {self.num_games} integer actions, got shape "
                                   f"{acts.shape} of {acts.dtype}")
        in_range = (acts >= 0) & (acts < NUM_ACTIONS)
        acts = np.where(in_range, acts, 0).astype(np.int32)
        keys = self._row_base + acts
        legal_keys = self._legal_keys
        pos = np.minimum(np.searchsorted(legal_keys, keys), len(legal_keys) - 1)
        ok = in_range & (legal_keys[pos] == keys)
        if not ok.all():
            slot = int(np.flatnonzero(~ok)[0])
            raise IllegalMoveError(
                f"action {int(np.asarray(actions)[slot])!r} is not legal in game slot {slot} "
                f"(position {self._games[slot].board.sfen()!r})")
        return acts

    def _apply_to_arrays(self, move16: np.ndarray, mover: np.ndarray) -> None:
        # Replay the moves on our Black's-view boards and colour-indexed hands.
        to_sq = move16 & 0x7F
        from_field = (move16 >> 7) & 0x7F
        promote = (move16 >> 14).astype(bool)
        sign = (1 - 2 * mover.astype(np.int8)).astype(np.int8)
        to_idx = _SQUARE_TO_BLACK_INDEX[to_sq]
        drop_hand = _DROP_FIELD_TO_HAND[from_field]
        drop = drop_hand >= 0
        board = self._black_board
        hands = self._hands
        rows = self._rows

        moving = ~drop
        r = rows[moving]
        frm = _SQUARE_TO_BLACK_INDEX[from_field[moving]]
        to = to_idx[moving]
        piece = np.abs(board[r, frm])
        captured = np.abs(board[r, to])
        board[r, frm] = 0
        piece = np.where(promote[moving], PROMOTE_CODE[piece], piece)
        board[r, to] = sign[moving] * piece
        took = captured != 0
        if took.any():
            hand_index = UNPROMOTE_CODE[captured[took]].astype(np.intp) - 1
            np.add.at(hands, (r[took], mover[moving][took], hand_index), 1)

        r = rows[drop]
        if len(r):
            hand_index = drop_hand[drop]
            board[r, to_idx[drop]] = sign[drop] * (hand_index + 1).astype(np.int8)
            hands[r, mover[drop], hand_index] -= 1

    def _new_game(self) -> _Game:
        return _Game(self.start_sfen, self._start_key, self._start_check)

    def _restart(self, i: int) -> None:
        self._games[i] = self._new_game()
        self._black_board[i] = self._start_black_board
        self._hands[i] = self._start_hands
        self._color[i] = self._start_color
        self._ply[i] = 0
        self._repetition[i] = 0
        self._in_check[i] = self._start_check

    def _state(self) -> CompactState:
        return CompactState(
            board=perspective_board(self._black_board, self._color),
            hands=perspective_hands(self._hands, self._color),
            color=self._color.copy(),
            ply=self._ply.copy(),
            repetition=self._repetition.copy(),
            in_check=self._in_check.copy(),
        )

    def _build_observation(self, moves: list[int], counts: list[int]) -> None:
        counts_arr = np.array(counts, dtype=np.intp)
        offsets = np.zeros(self.num_games + 1, dtype=np.int32)
        np.cumsum(counts_arr, out=offsets[1:])
        # One gather in the flattened [colour, move16] table, then one sort of
        # (row, action) keys puts every row in ascending action order.
        table_index = np.fromiter(moves, dtype=np.intp, count=len(moves)) & MOVE16_MASK
        table_index += np.repeat(self._color.astype(np.intp) << 15, counts_arr)
        row_base = np.repeat(self._row_base, counts_arr)
        keys = row_base + _MOVE16_TO_ACTION_FLAT[table_index]
        keys.sort()
        self._legal_keys = keys
        self._observation = Observation(
            state=self._state(),
            legal_offsets=offsets,
            legal_actions=(keys - row_base).astype(np.int16),
        )

