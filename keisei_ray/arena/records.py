"""Game records on disk: KIF (readable in Shogi GUIs) and an SVG picture of the final position."""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import cshogi

from actors.evaluation import GameRecord
from keisei_ray.files import make_dir, write_text_atomic
from shogi import Color, Outcome, Termination
from shogi.records import FORFEITS

log = logging.getLogger(__name__)


# Ends that only a player brings (the board does not show them): the record's reason says so.
_DECLARED = (Termination.RESIGN, *FORFEITS)


def record_kif(record: GameRecord, *, max_moves: int | None = None, impasse: bool = False) -> str:
    """The game as KIF text, its ending included (`max_moves`/`impasse`: the rules it was
    played under, so that a capped game ends as 持将棋; an engine's resignation or forfeit comes
    from the record)."""
    position = record.position(max_moves=max_moves, impasse=impasse)
    ending = (Outcome(None if record.winner is None else Color(record.winner),
                      Termination(record.reason))
              if record.reason in _DECLARED else None)  # a str Enum: "resign" matches
    return position.to_kif(names=(record.black, record.white), ending=ending)


def record_svg(record: GameRecord) -> str:
    """An SVG picture of the final position, the last move highlighted."""
    board = cshogi.Board(record.start_sfen)
    last = None
    for usi in record.moves:
        last = board.move_from_usi(usi)
        if not board.is_legal(last):
            raise ValueError(f"record {record.black} vs {record.white}: illegal move {usi!r} "
                             f"in {board.sfen()!r}")
        board.push(last)
    return str(board.to_svg(lastmove=last))


def write_record(record: GameRecord, folder: Path, stem: str, *, max_moves: int | None = None,
                 impasse: bool = False) -> list[Path]:
    """Write `<stem>.kif` and `<stem>.svg` into `folder` (created); return both paths."""
    make_dir(folder)
    paths = []
    for suffix, text in ((".kif", record_kif(record, max_moves=max_moves, impasse=impasse)),
                         (".svg", record_svg(record))):
        path = folder / f"{stem}{suffix}"
        write_text_atomic(path, text)
        paths.append(path)
    return paths


def wandb_media(paths: list[str] | list[Path], prefix: str = "eval/records") -> dict[str, Any]:
    """W&B media of written records, keyed `<prefix>/<file stem>`: each SVG as a picture, each
    KIF as preformatted text (both `wandb.Html`). For a W&B logger's `on_evaluation_done`:
    `run.log({"timestep": ..., **wandb_media(event.details["records"])})`."""
    import wandb  # noqa: PLC0415 - heavy; only runs that log to W&B import it

    media: dict[str, Any] = {}
    for name in paths:
        path = Path(name)
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".svg":
            media[f"{prefix}/{path.stem}/board"] = wandb.Html(text)
        elif path.suffix == ".kif":
            media[f"{prefix}/{path.stem}/kif"] = wandb.Html(f"<pre>{html.escape(text)}</pre>")
    return media
