"""A tiny USI engine for tests: `python fake_usi_engine.py MODE [N]`.

MODE: legal (the first legal move), crash (exit at the N-th `go`, default 1), illegal (a
well-formed move that is not legal), garbage (a malformed move), hang (never answer `go`),
resign, win (a false impasse declaration), silent (never answer `usi`), timeonly (like
GPSShogi: plays the first legal move for a `go` with btime/wtime/byoyomi, and for any other
`go` says "unknown option in go ..." on stderr and aborts with SIGABRT), hangonce (N is a
file: the first process to reach its 3rd `go` creates it and hangs there, every other plays
legal moves: one timed-out game in a match), garbleonce (N is a file, as for hangonce, but
the first process answers `04_07_` there, as Fairy-Stockfish 11.1 past move 256), empty
(answers a bare `bestmove`), stoponly (answers `go` only when sent `stop`, as
Fairy-Stockfish's depth-1 search in some lost positions).
"""

from __future__ import annotations

import os
import sys
import time

import cshogi


def main() -> None:
    mode = sys.argv[1]
    flag = sys.argv[2] if mode in ("hangonce", "garbleonce") else ""
    limit = int(sys.argv[2]) if len(sys.argv) > 2 and not flag else 1
    board = cshogi.Board()
    goes = 0
    pending = ""  # stoponly: the move held until `stop`

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    for raw in sys.stdin:
        words = raw.split()
        if not words:
            continue
        command = words[0]
        if command == "usi":
            if mode == "silent":
                continue
            say("id name fake")
            say("option name Skill type spin default 0 min 0 max 9")
            say("usiok")
        elif command == "isready":
            say("readyok")
        elif command == "position":
            rest = words[1:]
            if rest[0] == "startpos":
                board = cshogi.Board()
                rest = rest[1:]
            else:
                board = cshogi.Board(" ".join(rest[1:5]))
                rest = rest[5:]
            for usi in rest[1:]:
                board.push_usi(usi)
        elif command == "go":
            goes += 1
            legal = [cshogi.move_to_usi(m) for m in board.legal_moves]
            if mode == "timeonly" and words[1] not in ("btime", "wtime", "byoyomi", "infinite"):
                sys.stderr.write(f"unknown option in go {words[1]}\n")
                sys.stderr.flush()
                os.abort()
            if mode == "crash" and goes >= limit:
                sys.exit(3)
            if mode == "hang" or (mode == "hangonce" and goes == 3 and _first(flag)):
                time.sleep(3600)
            if mode == "stoponly":
                pending = legal[0]
            elif mode == "garbleonce" and goes == 3 and _first(flag):
                say("bestmove 04_07_")
            elif mode == "empty":
                say("bestmove")
            elif mode in ("legal", "timeonly", "hangonce", "garbleonce"):
                say("info depth 1 score cp 0 pv " + legal[0])
                say("bestmove " + legal[0])
            elif mode == "crash":
                say("bestmove " + legal[0])
            elif mode == "illegal":
                candidates = (f"{f}{r}{g}{s}" for f in range(1, 10) for r in "abcdefghi"
                              for g in range(1, 10) for s in "abcdefghi")
                say("bestmove " + next(m for m in candidates if m not in legal and
                                       m[:2] != m[2:]))
            elif mode == "garbage":
                say("bestmove zz")
            elif mode == "resign":
                say("bestmove resign")
            elif mode == "win":
                say("bestmove win")
        elif command == "stop" and pending:
            say("bestmove " + pending)
            pending = ""
        elif command == "quit":
            return


def _first(flag: str) -> bool:
    """Whether this process is the first to get here (it creates `flag`)."""
    try:
        with open(flag, "x"):
            return True
    except FileExistsError:
        return False


if __name__ == "__main__":
    main()
