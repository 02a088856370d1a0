"""Evaluation game records on disk: KIF that cshogi re-reads, SVG of the final position."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import cshogi
import cshogi.KIF
import pytest

from actors.evaluation import GameRecord, play_match
from actors.players import BaselinePlayer
from keisei_ray.arena.records import record_kif, record_svg, wandb_media, write_record


def test_records_of_a_match_are_written_and_reread(tmp_path: Path) -> None:
    result = play_match(BaselinePlayer("heuristic"), BaselinePlayer("random"), 2, max_moves=300,
                        records=2)
    for k, record in enumerate(result.records):
        kif_path, svg_path = write_record(record, tmp_path / "games", f"game-{k}", max_moves=300)
        assert (kif_path.name, svg_path.name) == (f"game-{k}.kif", f"game-{k}.svg")
        parser = cshogi.KIF.Parser.parse_str(kif_path.read_text(encoding="utf-8"))
        assert [cshogi.move_to_usi(m) for m in parser.moves] == record.moves
        assert parser.names == [record.black, record.white]
        # heuristic mates random: the KIF names the winner.
        assert record.reason == "checkmate"
        assert parser.win == (cshogi.BLACK_WIN if record.winner == 0 else cshogi.WHITE_WIN)
        root = ET.fromstring(svg_path.read_text(encoding="utf-8"))
        assert root.tag.endswith("svg")
    assert not list((tmp_path / "games").glob(".*"))  # no temporary files left


def test_capped_game_ends_as_jishogi() -> None:
    result = play_match(BaselinePlayer("random"), BaselinePlayer("random", 1, name="r2"), 1,
                        max_moves=20, records=1)
    (record,) = result.records
    assert record.reason == "max_moves"
    assert "持将棋" in record_kif(record, max_moves=20)
    assert "持将棋" not in record_kif(record)  # without the cap the game is still going


def test_svg_marks_the_last_move_and_rejects_a_bad_record() -> None:
    record = GameRecord("a", "b", cshogi.Board().sfen(), ["7g7f", "3c3d"], None, "max_moves")
    svg = record_svg(record)
    assert "#f6b94d" in svg  # the highlighted destination square
    bad = GameRecord("a", "b", cshogi.Board().sfen(), ["7g7f", "7g7f"], None, "max_moves")
    with pytest.raises(ValueError, match="illegal move '7g7f'"):
        record_svg(bad)


def test_records_as_wandb_media(tmp_path: Path) -> None:
    import wandb

    record = GameRecord("ts-10", "random", cshogi.Board().sfen(), ["7g7f", "3c3d"], None,
                        "max_moves")
    paths = write_record(record, tmp_path, "ts-10-vs-random-1", max_moves=2)
    media = wandb_media([str(p) for p in paths])
    assert set(media) == {"eval/records/ts-10-vs-random-1/kif",
                          "eval/records/ts-10-vs-random-1/board"}
    assert all(isinstance(v, wandb.Html) for v in media.values())
    assert "持将棋" in media["eval/records/ts-10-vs-random-1/kif"].html
