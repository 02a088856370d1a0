"""The exceptions of the game layer: every one names the bad input it was given."""

from __future__ import annotations


class ShogiError(Exception):
    """Base class of every error raised by the `shogi` package."""


class InvalidSfenError(ShogiError, ValueError):
    """A SFEN string is malformed or describes an impossible position."""


class IllegalMoveError(ShogiError, ValueError):
    """A move (USI string, Move or action index) is malformed or not legal in the position."""


class GameOverError(ShogiError):
    """A move was pushed after the game had ended."""
