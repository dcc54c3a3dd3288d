"""Arena: two anonymous models answer the same prompt, a person votes, a leaderboard ranks them.

Votes are stored in ``<run>/arena/votes.json`` (a JSON list, rewritten atomically on each vote so a
crash never leaves a torn file). The leaderboard is recomputed from all votes each time:

Bradley–Terry (Bradley & Terry 1952): P(i beats j) = p_i / (p_i + p_j). We fit the strengths p with
the MM algorithm of Hunter (2004), "MM algorithms for generalized Bradley–Terry models", eq. (3):

    p_i <- W_i / sum_{j != i} n_ij / (p_i + p_j)

where W_i is i's number of wins and n_ij the number of games between i and j. A tie counts as half a
win for each side. To keep undefeated / winless models finite we add one virtual tie between every
pair (a weak prior that shrinks ratings toward each other). Strengths are reported on the Elo scale,
``1000 + 400 * log10(p_i / geomean(p))``, so a 400-point gap means 10:1 odds.

Online Elo (the sequential update chess uses) is the slow, order-dependent twin shown beside it.
"""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

from chatforge.common import CfError, atomic_write_json, read_json

OUTCOMES = ("a", "b", "tie", "both_bad")


def bradley_terry(votes: list[dict], models: list[str] | None = None, iters: int = 200,
                  prior: float = 1.0) -> dict[str, float]:
    """Fit Bradley–Terry strengths from votes [{model_a, model_b, winner}], return Elo-scale ratings."""
    names = sorted(set(models or []) | {v["model_a"] for v in votes} | {v["model_b"] for v in votes})
    if not names:
        return {}
    idx = {m: i for i, m in enumerate(names)}
    k = len(names)
    wins = [0.0] * k
    games = [[0.0] * k for _ in range(k)]
    for i in range(k):  # the virtual tie prior between every pair
        for j in range(i + 1, k):
            games[i][j] += prior
            games[j][i] += prior
            wins[i] += prior / 2
            wins[j] += prior / 2
    for v in votes:
        a, b = idx[v["model_a"]], idx[v["model_b"]]
        if a == b:
            continue  # a model against itself says nothing about its rank
        games[a][b] += 1
        games[b][a] += 1
        w = v["winner"]
        if w == "a":
            wins[a] += 1
        elif w == "b":
            wins[b] += 1
        else:  # tie / both_bad: half a win each
            wins[a] += 0.5
            wins[b] += 0.5
    p = [1.0] * k
    for _ in range(iters):
        new = []
        for i in range(k):
            denom = sum(games[i][j] / (p[i] + p[j]) for j in range(k) if j != i and games[i][j] > 0)
            new.append(wins[i] / denom if denom > 0 else p[i])
        g = math.exp(sum(math.log(max(x, 1e-12)) for x in new) / k)  # fix the scale: geomean 1
        p = [max(x, 1e-12) / g for x in new]
    return {m: 1000.0 + 400.0 * math.log10(p[idx[m]]) for m in names}


def elo(votes: list[dict], k_factor: float = 32.0, base: float = 1000.0) -> dict[str, float]:
    """Sequential Elo updates in vote order (order-dependent, unlike Bradley–Terry)."""
    r: dict[str, float] = {}
    for v in votes:
        a, b = v["model_a"], v["model_b"]
        ra, rb = r.setdefault(a, base), r.setdefault(b, base)
        if a == b:
            continue
        ea = 1.0 / (1.0 + 10 ** ((rb - ra) / 400.0))
        sa = {"a": 1.0, "b": 0.0}.get(v["winner"], 0.5)
        r[a] = ra + k_factor * (sa - ea)
        r[b] = rb - k_factor * (sa - ea)
    return r


def leaderboard(votes: list[dict], models: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows sorted by Bradley–Terry rating: model, rating, elo, votes, wins, losses, ties."""
    bt = bradley_terry(votes, models)
    el = elo(votes)
    rows = []
    for m, rating in bt.items():
        mine = [v for v in votes if m in (v["model_a"], v["model_b"]) and v["model_a"] != v["model_b"]]
        w = sum(1 for v in mine if (v["winner"] == "a" and v["model_a"] == m) or (v["winner"] == "b" and v["model_b"] == m))
        t = sum(1 for v in mine if v["winner"] in ("tie", "both_bad"))
        rows.append({"model": m, "rating": round(rating, 1), "elo": round(el.get(m, 1000.0), 1),
                     "votes": len(mine), "wins": w, "losses": len(mine) - w - t, "ties": t})
    rows.sort(key=lambda r: -r["rating"])
    return rows


class VoteStore:
    """The votes file of one run: loaded once, appended under a lock, rewritten atomically."""
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.votes: list[dict] = []
        if self.path.exists():
            data = read_json(self.path, "arena votes file")
            if not isinstance(data, list) or not all(isinstance(v, dict) and {"model_a", "model_b", "winner"} <= set(v) for v in data):
                raise CfError(f"{self.path}: expected a JSON list of votes with model_a, model_b, winner")
            self.votes = data

    def add(self, model_a: str, model_b: str, winner: str, prompt: str = "") -> dict:
        if winner not in OUTCOMES:
            raise CfError(f"winner: expected one of {OUTCOMES}, got {winner!r}")
        vote = {"model_a": model_a, "model_b": model_b, "winner": winner, "prompt": prompt[:2000],
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with self.lock:
            new = self.votes + [vote]
            atomic_write_json(self.path, new)  # temp file + rename: never a half-written file
            self.votes = new
        return vote

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.votes)
