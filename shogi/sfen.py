"""SFEN validation. cshogi's own parser is lenient, so every field is checked here first."""

from __future__ import annotations

import re

import cshogi

from shogi.errors import InvalidSfenError

STARTING_SFEN = "lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b - 1"

MAX_MOVE_NUMBER = 1_000_000_000
"""Largest SFEN move number accepted (cshogi stores it in a C int and clamps beyond)."""

# Most pieces of each kind in the whole game (board, promoted or not, plus both hands).
_MAX_PIECES = {"P": 18, "L": 4, "N": 4, "S": 4, "G": 4, "B": 2, "R": 2}
_PROMOTABLE = set("PLNSBR")
_BOARD_TOKEN = re.compile(r"\+?[PLNSGBRKplnsgbrk]|[1-9]")
_HAND_TOKEN = re.compile(r"([1-9][0-9]?)?([PLNSGBRplnsgbr])")


# Long by choice: one check per SFEN field and rule, in the order a reader checks them.
def validate_sfen(sfen: str) -> str:
    """Check `sfen` thoroughly and return it with the move number filled in (default 1).

    Raises InvalidSfenError, quoting `sfen`, for a malformed string or an impossible position:
    bad board shape or tokens, piece counts beyond the set, a king missing or doubled, pieces
    that can never move again, two unpromoted pawns of one side on a file, a bad hand or side to
    move, or the side not to move in check.
    """
    if not isinstance(sfen, str):
        raise InvalidSfenError(f"SFEN must be a string, got {sfen!r}")
    parts = sfen.split()
    if len(parts) not in (3, 4):
        raise InvalidSfenError(f"invalid SFEN {sfen!r}: expected 'board side hands [move number]'")
    board, side, hands = parts[:3]
    number = parts[3] if len(parts) == 4 else "1"

    def fail(problem: str) -> InvalidSfenError:
        return InvalidSfenError(f"invalid SFEN {sfen!r}: {problem}")

    counts = dict.fromkeys(_MAX_PIECES, 0)
    kings = {"K": 0, "k": 0}
    pawn_files: set[tuple[bool, int]] = set()
    ranks = board.split("/")
    if len(ranks) != 9:
        raise fail(f"the board has {len(ranks)} ranks, expected 9")
    for rank_index, rank in enumerate(ranks):
        tokens = _BOARD_TOKEN.findall(rank)
        if "".join(tokens) != rank:
            raise fail(f"bad character in rank {rank_index + 1} {rank!r}")
        col = 0
        previous_digit = False
        for token in tokens:
            if token.isdigit():
                if previous_digit:
                    raise fail(f"adjacent empty-square counts in rank {rank_index + 1} {rank!r}")
                previous_digit = True
                col += int(token)
                continue
            previous_digit = False
            if col >= 9:
                raise fail(f"rank {rank_index + 1} {rank!r} covers more than 9 files")
            letter = token[-1]
            black = letter.isupper()
            kind = letter.upper()
            promoted = token[0] == "+"
            if promoted and kind not in _PROMOTABLE:
                raise fail(f"{token!r} cannot be promoted (rank {rank_index + 1})")
            if kind == "K":
                kings[letter] += 1
            else:
                counts[kind] += 1
            if not promoted:
                # Ranks left in front of the piece, seen from its owner.
                ahead = rank_index if black else 8 - rank_index
                if (kind in "PL" and ahead == 0) or (kind == "N" and ahead <= 1):
                    raise fail(f"{token!r} on rank {rank_index + 1} can never move")
                if kind == "P":
                    file = 9 - col
                    if (black, file) in pawn_files:
                        raise fail(f"two unpromoted {'black' if black else 'white'} pawns "
                                   f"on file {file}")
                    pawn_files.add((black, file))
            col += 1
        if col != 9:
            raise fail(f"rank {rank_index + 1} {rank!r} covers {col} files, expected 9")
    if kings != {"K": 1, "k": 1}:
        raise fail(f"expected one king per side, found {kings['K']} black and {kings['k']} white")

    if side not in ("b", "w"):
        raise fail(f"side to move must be 'b' or 'w', got {side!r}")

    if hands != "-":
        seen: set[str] = set()
        pos = 0
        for m in _HAND_TOKEN.finditer(hands):
            if m.start() != pos:
                break
            pos = m.end()
            letter = m[2]
            n = int(m[1]) if m[1] else 1
            if letter in seen:
                raise fail(f"hand piece {letter!r} listed twice")
            seen.add(letter)
            counts[letter.upper()] += n
        if pos != len(hands) or not hands:
            raise fail(f"malformed hands {hands!r}")

    for kind, n in counts.items():
        if n > _MAX_PIECES[kind]:
            raise fail(f"{n} pieces of kind {kind!r}, at most {_MAX_PIECES[kind]} exist")

    if not re.fullmatch(r"[0-9]{1,10}", number) or not 1 <= int(number) <= MAX_MOVE_NUMBER:
        raise fail(f"move number must be an integer 1..{MAX_MOVE_NUMBER}, got {number!r}")

    normalized = f"{board} {side} {hands} {int(number)}"
    # The side that just moved may not have left its king in check.
    other = cshogi.Board(f"{board} {'w' if side == 'b' else 'b'} {hands} 1")
    if other.is_check():
        raise fail(f"the side not to move ({'white' if side == 'b' else 'black'}) is in check")
    return normalized
