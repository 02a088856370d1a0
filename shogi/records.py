"""Game records: KIF and CSA export of a finished or ongoing game."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cshogi
import cshogi.KIF

from shogi.moves import Color
from shogi.rules import Outcome, Termination
from shogi.sfen import STARTING_SFEN

if TYPE_CHECKING:
    from shogi.position import Position

_KIF_SIDE = {Color.BLACK: "先手", Color.WHITE: "後手"}
FORFEITS = (Termination.ENGINE_CRASH, Termination.ENGINE_TIMEOUT, Termination.ILLEGAL_MOVE,
            Termination.MALFORMED_MOVE)
_CSA_SIDE = {Color.BLACK: "+", Color.WHITE: "-"}


def _is_standard_start(sfen: str) -> bool:
    # Same board, side and hands as the standard start (the move number may differ).
    return sfen.split()[:3] == STARTING_SFEN.split()[:3]


def to_kif(position: Position, names: tuple[str, str] = ("Black", "White"),
           ending: Outcome | None = None, *, interrupted: bool = False) -> str:
    """The game of `position` (from its start SFEN) as KIF text, with its result if it ended.

    Mates are written `詰み`; a side left without a legal move `投了`; sennichite `千日手`;
    perpetual check as the checker's `反則負け`; impasse `入玉宣言`; the move cap `持将棋`.
    `ending`: how the game ended where the board does not show it (a resignation `投了`, an
    engine's forfeit `反則負け`); `interrupted`: it stopped unfinished (`中断`).
    """
    lines = []
    if _is_standard_start(position.start_sfen):
        lines.append("手合割：平手")
    else:
        lines.append(cshogi.KIF.board_to_bod(cshogi.Board(position.start_sfen)))
    lines += [f"先手：{names[0]}", f"後手：{names[1]}", "手数----指手---------消費時間--"]
    previous = None
    history = position.cshogi_history()
    for number, move in enumerate(history, start=1):
        lines.append(f"{number:>4} {cshogi.KIF.move_to_kif(move, previous)}   ( 0:00/00:00:00)")
        previous = move
    outcome = position.outcome() or ending
    if outcome is not None:
        lines += _kif_ending(outcome, len(history))
    elif interrupted:
        lines += [f"{len(history) + 1:>4} 中断", f"まで{len(history)}手で中断"]
    return "\n".join(lines) + "\n"


def _kif_ending(outcome: Outcome, plies: int) -> list[str]:
    number = f"{plies + 1:>4}"
    winner = outcome.winner
    reason = outcome.reason
    if reason is Termination.CHECKMATE and winner is not None:
        return [f"{number} 詰み", f"まで{plies}手で{_KIF_SIDE[winner]}の勝ち"]
    if reason is Termination.NO_LEGAL_MOVES and winner is not None:
        return [f"{number} 投了", f"まで{plies}手で{_KIF_SIDE[winner]}の勝ち"]
    if reason is Termination.PERPETUAL_CHECK and winner is not None:
        loser = _KIF_SIDE[winner.opponent()]
        return [f"{number} 千日手", f"まで{plies}手で{loser}の反則負け（連続王手の千日手）"]
    if reason is Termination.IMPASSE and winner is not None:
        return [f"{number} 入玉宣言", f"まで{plies}手で{_KIF_SIDE[winner]}の入玉勝ち"]
    if reason is Termination.SENNICHITE:
        return [f"{number} 千日手", f"まで{plies}手で千日手"]
    if reason is Termination.RESIGN and winner is not None:
        return [f"{number} 投了", f"まで{plies}手で{_KIF_SIDE[winner]}の勝ち"]
    if reason in FORFEITS and winner is not None:
        return [f"{number} 反則負け", f"まで{plies}手で{_KIF_SIDE[winner.opponent()]}の反則負け"]
    return [f"{number} 持将棋", f"まで{plies}手で持将棋"]


def to_csa(position: Position, names: tuple[str, str] = ("Black", "White")) -> str:
    """The game of `position` (from its start SFEN) as CSA V2.2 text, with its result if it ended.

    Mates and a side left without a legal move end with `%TORYO` (the side to move lost);
    sennichite `%SENNICHITE`; perpetual check `%+ILLEGAL_ACTION`/`%-ILLEGAL_ACTION` (the
    checker's foul); impasse `%KACHI`; the move cap `%JISHOGI`. A comment names the reason.
    """
    lines = ["V2.2", f"N+{names[0]}", f"N-{names[1]}"]
    start = cshogi.Board(position.start_sfen)
    if _is_standard_start(position.start_sfen):
        lines += ["PI", "+"]
    else:
        lines.append(start.csa_pos().rstrip("\n"))
    side = Color(start.turn)
    for move in position.cshogi_history():
        lines.append(_CSA_SIDE[side] + cshogi.move_to_csa(move))
        side = side.opponent()
    outcome = position.outcome()
    if outcome is not None:
        lines.append(f"'{outcome.reason.value}")
        lines.append(_csa_ending(outcome))
    return "\n".join(lines) + "\n"


def _csa_ending(outcome: Outcome) -> str:
    reason = outcome.reason
    if reason in (Termination.CHECKMATE, Termination.NO_LEGAL_MOVES, Termination.RESIGN):
        return "%TORYO"
    if reason in FORFEITS and outcome.winner is not None:
        return f"%{_CSA_SIDE[outcome.winner.opponent()]}ILLEGAL_ACTION"
    if reason is Termination.PERPETUAL_CHECK and outcome.winner is not None:
        return f"%{_CSA_SIDE[outcome.winner.opponent()]}ILLEGAL_ACTION"
    if reason is Termination.IMPASSE:
        return "%KACHI"
    if reason is Termination.SENNICHITE:
        return "%SENNICHITE"
    return "%JISHOGI"
