"""The game: rules on cshogi, notation, compact state, action map, vectorised env, opponents.

Imports numpy and cshogi only. Rule semantics are those of DESIGN.md (sennichite at the 4th
occurrence, perpetual check loses, no legal move loses, optional 27-point impasse, move cap).
"""

from shogi.actions import (
    NUM_ACTIONS,
    action_to_move,
    actions_to_moves,
    move_to_action,
    moves_to_actions,
)
from shogi.compact import HAND_MAX, CompactState, material_balance
from shogi.errors import GameOverError, IllegalMoveError, InvalidSfenError, ShogiError
from shogi.moves import HAND_PIECE_SYMBOLS, Color, Move, square, square_name
from shogi.players import HeuristicPlayer, MixedPlayer, RandomPlayer
from shogi.position import Position
from shogi.records import to_csa, to_kif
from shogi.rules import Outcome, Termination
from shogi.sfen import STARTING_SFEN, validate_sfen
from shogi.vecenv import FinishedGame, Observation, StepResult, VecEnv

__all__ = [
    "HAND_MAX",
    "HAND_PIECE_SYMBOLS",
    "NUM_ACTIONS",
    "STARTING_SFEN",
    "Color",
    "CompactState",
    "FinishedGame",
    "GameOverError",
    "HeuristicPlayer",
    "IllegalMoveError",
    "InvalidSfenError",
    "MixedPlayer",
    "Move",
    "Observation",
    "Outcome",
    "Position",
    "RandomPlayer",
    "ShogiError",
    "StepResult",
    "Termination",
    "VecEnv",
    "action_to_move",
    "actions_to_moves",
    "material_balance",
    "move_to_action",
    "moves_to_actions",
    "square",
    "square_name",
    "to_csa",
    "to_kif",
    "validate_sfen",
]
