"""`keisei-ray play MODEL`: a game against the agent in the terminal.

The board is drawn with Rich in USI coordinates (files 9..1 left to right, ranks a..i top to
bottom; White's pieces are marked `v`), moves are typed in USI (`7g7f`, `8h2b+`, `P*5e`), and an
illegal or malformed move is refused with the legal alternatives that are closest to what was
typed (the moves of that piece, to that square, or of that drop).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.text import Text

from actors.players import Player
from keisei_ray.files import make_dir, write_text_atomic
from shogi import (
    HAND_PIECE_SYMBOLS,
    Color,
    IllegalMoveError,
    Move,
    Outcome,
    Position,
    Termination,
    square,
    square_name,
)

log = logging.getLogger(__name__)

HELP = ("Type a move in USI: 7g7f (from 7g to 7f), 8h2b+ (with promotion), P*5e (drop a pawn). "
        "Commands: moves (list the legal moves), undo (take back your last move), "
        "resign, help.")
_HAND_RE = re.compile(r"(\d*)([PLNSGBRplnsgbr])")


def hands_of(position: Position) -> dict[Color, dict[str, int]]:
    """Pieces in hand per side, from the SFEN (letters P L N S G B R)."""
    hands: dict[Color, dict[str, int]] = {Color.BLACK: {}, Color.WHITE: {}}
    field = position.sfen().split()[2]
    if field != "-":
        for count, letter in _HAND_RE.findall(field):
            side = Color.BLACK if letter.isupper() else Color.WHITE
            hands[side][letter.upper()] = int(count or 1)
    return hands


def render_board(position: Position, last: Move | None = None) -> Text:
    """The position as Rich text: the board, both hands, and whose move it is."""
    text = Text()
    hands = hands_of(position)

    def hand_line(color: Color) -> str:
        pieces = hands[color]
        listed = " ".join(f"{p}{n if n > 1 else ''}" for p in HAND_PIECE_SYMBOLS
                          if (n := pieces.get(p, 0)))
        return f"{'Black' if color == Color.BLACK else 'White'} in hand: {listed or '-'}\n"

    text.append(hand_line(Color.WHITE), style="red")
    text.append("   " + "".join(f"{f:>3}" for f in range(9, 0, -1)) + "\n", style="dim")
    highlighted = set()
    if last is not None:
        highlighted.add(last.to_square)
        if last.from_square is not None:
            highlighted.add(last.from_square)
    for rank in range(1, 10):
        text.append("   ")
        for file in range(9, 0, -1):
            sq = square(file, rank)
            symbol = position.piece_at(sq)
            style = "on grey23" if sq in highlighted else ""
            if symbol is None:
                text.append("  .", style=style or "dim")
            elif symbol.lstrip("+").isupper():
                text.append(f"{symbol:>3}", style=f"bold {style}".strip())
            else:
                text.append(f"{'v' + symbol.upper():>3}", style=f"red {style}".strip())
        text.append(f"  {chr(ord('a') + rank - 1)}\n", style="dim")
    text.append(hand_line(Color.BLACK), style="bold")
    turn = "Black" if position.turn == Color.BLACK else "White"
    check = " (in check)" if position.is_check() else ""
    text.append(f"ply {position.ply}, {turn} to move{check}\n")
    return text


def hint(position: Position, typed: str) -> str:
    """Legal alternatives closest to a refused input."""
    legal = position.legal_moves()
    words = [m.usi() for m in legal]
    try:
        move = Move.from_usi(typed)
    except IllegalMoveError:
        move = None
    if move is None:
        origin = typed[:2] if re.fullmatch(r"[1-9][a-i]", typed[:2]) else None
        if origin is not None:
            starts = [w for w in words if w.startswith(origin)]
            if starts:
                return f"legal moves from {origin}: {' '.join(starts)}"
        return (f"expected a USI move such as 7g7f, 8h2b+ or P*5e; {len(words)} legal moves "
                "(type 'moves' to list them)")
    if move.drop_piece is not None:
        drops = [w for w in words if w.startswith(f"{move.drop_piece}*")]
        if not drops:
            return f"you have no {move.drop_piece} to drop"
        return f"legal drops of {move.drop_piece}: {' '.join(drops)}"
    assert move.from_square is not None
    origin = square_name(move.from_square)
    starts = [w for w in words if w.startswith(origin)]
    if starts:
        return f"legal moves from {origin}: {' '.join(starts)}"
    piece = position.piece_at(move.from_square)
    mine = piece is not None and piece.lstrip("+").isupper() == (position.turn == Color.BLACK)
    problem = f"the piece on {origin} has no legal move" if mine else \
        f"no piece of yours on {origin}"
    target = square_name(move.to_square)
    arrivals = [w for w in words if w[2:4] == target]
    return problem + (f"; legal moves to {target}: {' '.join(arrivals)}" if arrivals else "")


class TerminalGame:
    """One game of a person (typing moves) against a player, drawn on a Rich console."""

    def __init__(self, agent: Player, human: Color, console: Console, *,
                 position: Position | None = None) -> None:
        self.agent = agent
        self.human = human
        self.console = console
        self.position = position or Position()
        self.last: Move | None = None
        self.resigned = False
        self.ending: Outcome | None = None  # a resignation: an end the board does not show
        self.abandoned = False  # input ended before the game did

    def run(self, read: Callable[[str], str]) -> str:
        """Play until the game ends, the person resigns, or input ends.

        Returns the result from the person's side: "win", "loss", "draw" or "abandoned".
        """
        position = self.position
        self.console.print(HELP)
        self.console.print(f"You play {'Black' if self.human == Color.BLACK else 'White'}.")
        while True:
            self.console.print(render_board(position, self.last))
            outcome = position.outcome()
            if outcome is not None:
                return self._announce(outcome)
            if position.turn != self.human:
                move = self.agent.choose([position])[0]
                if isinstance(move, Outcome):  # an engine resigned or failed
                    self.ending = move
                    return self._announce(move)
                position.push(move)
                self.last = move
                self.console.print(f"{self.agent.name} plays [bold]{move.usi()}[/bold]")
                continue
            while True:
                try:
                    typed = read("your move> ").strip()
                except EOFError:
                    self.console.print("input ended: game abandoned")
                    self.abandoned = True
                    return "abandoned"
                if self._command(typed):
                    break
            if self.resigned:
                return "loss"

    def _command(self, typed: str) -> bool:
        """Handle one input line; True when the board should be drawn again."""
        position = self.position
        if not typed:
            return False
        if typed in ("help", "?"):
            self.console.print(HELP)
            return False
        if typed == "moves":
            self.console.print(" ".join(m.usi() for m in position.legal_moves()))
            return False
        if typed == "resign":
            self.resigned = True
            self.ending = Outcome(self.human.opponent(), Termination.RESIGN)
            self.console.print("you resign: the agent wins")
            return True
        if typed == "undo":
            if position.ply < 2:
                self.console.print("nothing to take back")
                return False
            position.pop()
            position.pop()
            self.last = position.moves[-1] if position.moves else None
            return True
        try:
            self.last = position.push_usi(typed)
        except IllegalMoveError:
            self.console.print(f"[red]illegal move {typed!r}[/red]: {hint(position, typed)}",
                               markup=True, highlight=False)
            return False
        return True

    def _announce(self, outcome: Outcome) -> str:
        reason = outcome.reason.value.replace("_", " ")
        plies = self.position.ply
        if outcome.winner is None:
            self.console.print(f"draw ({reason}) after {plies} plies")
            return "draw"
        if outcome.winner == self.human:
            self.console.print(f"you win ({reason}) after {plies} plies")
            return "win"
        self.console.print(f"{self.agent.name} wins ({reason}) after {plies} plies")
        return "loss"

    def save_kif(self, path: Path) -> Path:
        """The game so far as KIF (for a Shogi GUI), with its result lines as evaluation records
        have them: a resignation `投了`, an engine's forfeit, an abandoned game `中断`."""
        names = ("you", self.agent.name) if self.human == Color.BLACK else (self.agent.name,
                                                                             "you")
        make_dir(path.parent)
        write_text_atomic(path, self.position.to_kif(names=names, ending=self.ending,
                                                     interrupted=self.abandoned))
        return path

