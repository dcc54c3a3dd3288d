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

The automatic arena (``chatforge arena --run DIR``) needs no people: every model of the run (base with
a few-shot prompt, sft, rl, dpo, and any ``--model NAME=PATH``) answers held-out prompts of the world
whose right answer a checker knows (facts about known people, arithmetic, letter counting, identity,
and unknown people where "I don't know" is the right answer). Every pair of models on every prompt is
one battle, judged by the checker (a win when exactly one is right, a tie when both are right or both
wrong) or by the reward model (higher score wins). The battles go into the same votes file as the
people's votes, marked with their judge ("checker", "rm", "human"). Ratings get 95% intervals by the
bootstrap (Efron 1979): refit Bradley–Terry on battles resampled with replacement, keep the 2.5th and
97.5th percentiles (as LMSYS Chatbot Arena does, Chiang et al. 2024, arXiv:2403.04132, sec. 4).
"""
from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import matplotlib.pyplot as plt

from chatforge.assistant.convo import (answer_matches, ask, chat, IDENTITY_QUESTIONS, is_refusal, refusal,
                                      sample_replies)
from chatforge.assistant.tasks import math_correct
from chatforge.assistant.tools import default_tools
from chatforge.common import (add_config_args, atomic_write_json, CfError, config_from_args, get_device, make_parser,
                              print0, print_config, read_json, run_dir, save_figure)
from chatforge.model.checkpoint import latest_checkpoint, load_checkpoint, model_specs
from chatforge.model.engine import Engine
from chatforge.report import experiment, fmt_diff, md_table, update_results, upsert_report_section
from chatforge.rl.reward import load_reward_model, score_texts
from chatforge.world.build import load_world, World

OUTCOMES = ("a", "b", "tie", "both_bad")
JUDGES = ("human", "checker", "rm")
STAGES = ("base", "sft", "rl", "rlhf", "dpo")     # the run's models, in pipeline order


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

    def add(self, model_a: str, model_b: str, winner: str, prompt: str = "", judge: str = "human") -> dict:
        if winner not in OUTCOMES:
            raise CfError(f"winner: expected one of {OUTCOMES}, got {winner!r}")
        vote = {"model_a": model_a, "model_b": model_b, "winner": winner, "prompt": prompt[:2000],
                "judge": judge, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with self.lock:
            self._write(self.votes + [vote])
        return vote

    def replace_judge(self, judge: str, votes: list[dict]) -> None:
        """Swap every vote of ``judge`` for ``votes`` (a re-run of the automatic arena replaces its last
        battles; the people's votes stay)."""
        with self.lock:
            self._write([v for v in self.votes if judge_of(v) != judge] + [{**v, "judge": judge} for v in votes])

    def _write(self, new: list[dict]) -> None:
        atomic_write_json(self.path, new)  # temp file + rename: never a half-written file
        self.votes = new

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.votes)


def judge_of(vote: dict) -> str:
    """Votes written before judges were recorded came from people."""
    return vote.get("judge", "human")


# ----------------------------------------------------------------------------- statistics of battles

def bootstrap_intervals(votes: list[dict], models: list[str], rng: random.Random, n_boot: int = 200,
                        level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap of the Bradley–Terry ratings: refit on ``n_boot`` resamples of the battles."""
    names = sorted(set(models) | {v["model_a"] for v in votes} | {v["model_b"] for v in votes})
    if not votes:
        return {m: (1000.0, 1000.0) for m in names}
    samples: dict[str, list[float]] = {m: [] for m in names}
    for _ in range(n_boot):
        resample = [votes[rng.randrange(len(votes))] for _ in votes]
        for m, r in bradley_terry(resample, names).items():
            samples[m].append(r)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2

    def q(xs: list[float], p: float) -> float:   # nearest-rank percentile
        xs = sorted(xs)
        return xs[min(len(xs) - 1, max(0, math.ceil(p * len(xs)) - 1))]
    return {m: (q(samples[m], lo_q), q(samples[m], hi_q)) for m in names}


def win_matrix(votes: list[dict], models: list[str]) -> dict[str, dict[str, float | None]]:
    """win[a][b]: the share of a's battles against b that a won, a tie counting half (None: never met)."""
    score = {a: {b: 0.0 for b in models} for a in models}
    games = {a: {b: 0 for b in models} for a in models}
    for v in votes:
        a, b = v["model_a"], v["model_b"]
        if a == b or a not in score or b not in score:
            continue
        sa = {"a": 1.0, "b": 0.0}.get(v["winner"], 0.5)
        score[a][b] += sa
        score[b][a] += 1 - sa
        games[a][b] += 1
        games[b][a] += 1
    return {a: {b: (score[a][b] / games[a][b] if games[a][b] else None) for b in models} for a in models}


def summarize(votes: list[dict], models: list[str], rng: random.Random, n_boot: int = 200) -> dict[str, Any]:
    """Leaderboard rows with 95% intervals (sorted by rating) and the win-rate matrix."""
    ci = bootstrap_intervals(votes, models, rng, n_boot)
    rows = leaderboard(votes, models)
    for r in rows:
        r["lo"], r["hi"] = round(ci[r["model"]][0], 1), round(ci[r["model"]][1], 1)
    return {"leaderboard": rows, "win_matrix": win_matrix(votes, [r["model"] for r in rows]),
            "n_battles": len(votes), "n_boot": n_boot}


# ----------------------------------------------------------------------------- tasks with known answers

@dataclass
class ArenaTask:
    kind: str                      # fact | unknown | math | letters | identity
    question: str
    reference: str                 # a reply the checker accepts: the world's truth, written out
    check: Callable[[str], bool] = field(repr=False)


def _number_task(kind: str, question: str, answer: Any) -> ArenaTask:
    return ArenaTask(kind, question, f"The answer is {answer}.",
                     lambda r: math_correct(r, answer))


def arena_tasks(ev: dict, n_per_kind: int) -> list[ArenaTask]:
    """Held-out prompts of the world (``<run>/sft_data/eval.json``: never trained on) with their checkers,
    the same ones the assistant experiments use: up to ``n_per_kind`` of each kind."""
    n = n_per_kind
    tasks = [ArenaTask("fact", it["question"], f"{it['answer']}.",
                       lambda r, t=it["answer"]: not is_refusal(r) and answer_matches(r, t)) for it in ev["known"][:n]]
    tasks += [ArenaTask("unknown", it["question"], refusal(it["name"]), is_refusal) for it in ev["unknown"][:n]]
    tasks += [_number_task("math", p["question"], p["answer"]) for p in ev["problems"][:n]]
    tasks += [_number_task("letters", t["question"], t["answer"]) for t in ev["letters"][:n]]
    ident = ev["identity"]
    held_out = [(k, q) for k in ("name", "maker") for q in IDENTITY_QUESTIONS[k][1]]   # wordings SFT never saw
    for k, q in held_out[:n]:
        target = ident[k]
        tasks.append(ArenaTask("identity", q, f"I am {ident['name']}, made by {ident['maker']}.",
                               lambda r, t=target: t.lower() in r.lower()))
    return tasks


# ----------------------------------------------------------------------------- answerers

Answerer = Callable[[str], str]      # question -> reply text; any model, checkpoint or not


def chat_answerer(model: Any, tokenizer: Any, tools: Any = None, max_new_tokens: int = 64) -> Answerer:
    """A chat checkpoint as an answerer: the question as a user message, the greedy reply (tools run)."""
    engine = Engine(model, tokenizer, tools=tools)
    return lambda q: ask(engine, tokenizer, chat(q), n=1, max_new_tokens=max_new_tokens)[0]


NOBODY = "Ada Nobody"    # a name no world generates (its names are made-up syllables), for the refusal shot


def few_shots(world: World, ev: dict) -> list[str]:
    """In-context examples for the base model, one per kind, from the world's training side."""
    held = {it["person"] for it in ev["known"] + ev["unknown"]}
    person = next(p for p in world.known if p.id not in held)
    prob = next(p for p in world.problems if p.get("split") == "train")
    let = next(t for t in world.letters if t.get("split") == "train" and t["kind"] == "count_letter")
    ident = world.identity
    shots = [(f"Where was {person.name} born?", f"{person.city}."), (prob["question"], f"The answer is {prob['answer']}."),
             (let["question"], f"The answer is {let['answer']}."), (f"Where does {NOBODY} work?", refusal(NOBODY)),
             ("What is your name?", f"I am {ident['name']}, made by {ident['maker']}.")]
    return [f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots]


def base_answerer(model: Any, tokenizer: Any, shots: list[str], max_new_tokens: int = 32) -> Answerer:
    """A base model as an answerer: few-shot ``Question:/Answer:`` text (as many shots as the context
    holds), the greedy line after "Answer:"."""
    engine = Engine(model, tokenizer)

    def answer(q: str) -> str:
        for k in range(len(shots), -1, -1):
            ids = [tokenizer.bos_id] + tokenizer.encode("".join(shots[:k]) + f"Question: {q}\nAnswer:")
            if len(ids) + max_new_tokens <= model.config.seq_len:
                break
        out = sample_replies(engine, tokenizer, ids, 1, max_new_tokens)[0]
        return tokenizer.decode(out).split("\n")[0].strip()    # the answer line only
    return answer


# ----------------------------------------------------------------------------- battles

Judge = Callable[[ArenaTask, str, str], str]    # (task, reply a, reply b) -> "a" | "b" | "tie"


def checker_judge(task: ArenaTask, a: str, b: str) -> str:
    ok_a, ok_b = bool(task.check(a)), bool(task.check(b))
    return "a" if ok_a and not ok_b else "b" if ok_b and not ok_a else "tie"


def rm_judge(rm: Any, tokenizer: Any, device: str = "cpu") -> Judge:
    """The reward model as the judge: the higher-scored reply wins; scores within ``tol`` tie (the same
    reply twice can differ in the last bits between batch rows)."""
    tol = 1e-5

    def judge(task: ArenaTask, a: str, b: str) -> str:
        sa, sb = score_texts(rm, tokenizer, [[task.question]] * 2, [a, b], device)
        return "a" if sa > sb + tol else "b" if sb > sa + tol else "tie"
    return judge


def play(models: dict[str, Answerer], tasks: list[ArenaTask]) -> dict[str, list[str]]:
    """Every model's reply to every task (in task order)."""
    out = {}
    for name, answer in models.items():
        t0 = time.perf_counter()
        out[name] = [answer(t.question) for t in tasks]
        print0(f"arena: {name} answered {len(tasks)} prompts in {time.perf_counter() - t0:.1f}s")
    return out


def battles(tasks: list[ArenaTask], replies: dict[str, list[str]], judge: Judge = checker_judge) -> list[dict]:
    """One battle per task and pair of models; sides alternate between tasks (no position favoured)."""
    names = list(replies)
    out = []
    for i, task in enumerate(tasks):
        for x in range(len(names)):
            for y in range(x + 1, len(names)):
                a, b = (names[x], names[y]) if i % 2 == 0 else (names[y], names[x])
                out.append({"model_a": a, "model_b": b, "winner": judge(task, replies[a][i], replies[b][i]),
                            "prompt": task.question, "kind": task.kind})
    return out


def checked(tasks: list[ArenaTask], replies: dict[str, list[str]]) -> dict[str, list[bool]]:
    """Per model: does the checker accept its reply to each task (in task order)."""
    return {m: [bool(t.check(r)) for t, r in zip(tasks, rs)] for m, rs in replies.items()}


def accuracy(tasks: list[ArenaTask], ok: dict[str, list[bool]]) -> dict[str, dict[str, float]]:
    """Per model: the share of prompts the checker accepts, per kind and overall."""
    kinds = sorted({t.kind for t in tasks})
    out = {}
    for m, oks in ok.items():
        out[m] = {k: sum(o for o, t in zip(oks, tasks) if t.kind == k) / sum(t.kind == k for t in tasks) for k in kinds}
        out[m]["all"] = sum(oks) / len(oks)
    return out


# ----------------------------------------------------------------------------- the run's arena

def run_models(rd: Path, specs: list[str], world: World, ev: dict, device: str) -> dict[str, Answerer]:
    """The run's stage checkpoints (base few-shot, chat stages with the world's tools) and NAME=PATH specs
    (chat models)."""
    paths = {s: rd / s for s in STAGES if latest_checkpoint(rd / s) is not None} | model_specs(specs)
    tools = default_tools(world)
    out: dict[str, Answerer] = {}
    for name, path in paths.items():
        ck = load_checkpoint(path, device=device)
        out[name] = (base_answerer(ck.model, ck.tokenizer, few_shots(world, ev)) if name == "base"
                     else chat_answerer(ck.model, ck.tokenizer, tools))
    return out


@dataclass
class ArenaConfig:
    run: str = field(default="speedrun", metadata={"help": "run directory (runs/<run>): its models, world and report"})
    n_per_kind: int = field(default=20, metadata={"help": "held-out prompts per kind (fact, unknown, math, letters, identity)"})
    judge: str = field(default="checker", metadata={"help": "who decides a battle", "choices": ["checker", "rm"]})
    rm: str = field(default="", metadata={"help": "reward model checkpoint for --judge rm (default: <run>/rm)"})
    n_boot: int = field(default=200, metadata={"help": "bootstrap resamples for the 95% intervals"})
    seed: int = field(default=0, metadata={"help": "seed of the bootstrap"})
    device: str = field(default="auto", metadata={"help": "cpu | cuda | mps | auto"})


def run_arena(cfg: ArenaConfig, specs: list[str] = (), answerers: dict[str, Answerer] | None = None
              ) -> tuple[str, dict[str, Any]]:
    """Play the run's models (and ``answerers``, e.g. test oracles) on held-out prompts; write the battles
    into ``<run>/arena/votes.json`` (judge-marked), ``arena/auto.json``, the plot, report.md and results.json."""
    rd = run_dir(cfg.run)
    if cfg.judge not in ("checker", "rm"):
        raise CfError(f"--judge: expected 'checker' or 'rm', got {cfg.judge!r}")
    ev = read_json(rd / "sft_data" / "eval.json", "held-out items (run `chatforge sft` first)")
    world = load_world(rd)
    device = get_device(cfg.device)
    models = {**run_models(rd, list(specs), world, ev, device), **(answerers or {})}
    if len(models) < 2:
        raise CfError(f"arena: needs at least two models, found {sorted(models)} in {rd}")
    tasks = arena_tasks(ev, cfg.n_per_kind)
    replies = play(models, tasks)
    judge: Judge = checker_judge
    if cfg.judge == "rm":
        rm = load_reward_model(cfg.rm or rd / "rm", device)
        judge = rm_judge(rm, rm.tokenizer, device)
    votes = battles(tasks, replies, judge)
    board = summarize(votes, list(models), random.Random(cfg.seed), cfg.n_boot)
    ok = checked(tasks, replies)
    ranked = [r["model"] for r in board["leaderboard"]]
    # results.json: each model's checker accuracy is a condition (Wilson CI); neighbours in the ranking
    # get a paired-bootstrap difference over the same prompts
    summary = experiment(ok, diffs=list(zip(ranked, ranked[1:])), **board, judge=cfg.judge, n_prompts=len(tasks),
                         accuracy=accuracy(tasks, ok),
                         kinds={k: sum(t.kind == k for t in tasks) for k in sorted({t.kind for t in tasks})})
    store = VoteStore(rd / "arena" / "votes.json")
    store.replace_judge(cfg.judge, votes)
    humans = [v for v in store.snapshot() if judge_of(v) == "human"]
    if humans:
        summary["human"] = summarize(humans, sorted({m for v in humans for m in (v["model_a"], v["model_b"])}),
                                     random.Random(cfg.seed), cfg.n_boot)
    atomic_write_json(rd / "arena" / "auto.json", {**summary, "examples": [
        {"kind": t.kind, "question": t.question, "replies": {m: replies[m][i] for m in models}}
        for i, t in enumerate(tasks)]})
    plot_arena(summary, rd / "report" / "arena.png")
    md = arena_markdown(summary)
    upsert_report_section(rd, "arena", md)
    update_results(rd, "arena", summary)
    return md, summary


def plot_arena(summary: dict[str, Any], path: Path) -> Path:
    """Ratings with their 95% intervals, and the win-rate matrix -> PNG."""
    rows = summary["leaderboard"]
    names = [r["model"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 0.5 * len(names) + 2.2))
    y = list(range(len(names)))[::-1]
    ax[0].errorbar([r["rating"] for r in rows], y, xerr=[[r["rating"] - r["lo"] for r in rows],
                                                         [r["hi"] - r["rating"] for r in rows]], fmt="o", capsize=4)
    ax[0].set_yticks(y, names)
    ax[0].set_xlabel("Bradley–Terry rating (Elo scale), 95% bootstrap interval")
    ax[0].set_title(f"arena: {summary['n_battles']} battles, judge {summary['judge']}")
    w = summary["win_matrix"]
    grid = [[w[a][b] if w[a][b] is not None else float("nan") for b in names] for a in names]
    im = ax[1].imshow(grid, vmin=0, vmax=1, cmap="RdBu")
    ax[1].set_xticks(range(len(names)), names, rotation=45)
    ax[1].set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            if grid[i][j] == grid[i][j]:
                ax[1].text(j, i, f"{grid[i][j]:.2f}", ha="center", va="center", fontsize=8)
    ax[1].set_title("win rate of row vs column (ties half)")
    fig.colorbar(im, ax=ax[1])
    return save_figure(fig, path)


def arena_markdown(summary: dict[str, Any]) -> str:
    rows = summary["leaderboard"]
    acc = summary["accuracy"]
    kinds = list(summary["kinds"])
    names = [r["model"] for r in rows]
    w = summary["win_matrix"]
    md = ["## Arena: the models against each other", "",
          f"{summary['n_prompts']} held-out prompts ({', '.join(f'{n} {k}' for k, n in summary['kinds'].items())}), "
          f"every pair of models on every prompt: {summary['n_battles']} battles judged by the "
          f"{'checker (a win when exactly one reply is right, a tie when both are right or both wrong)' if summary['judge'] == 'checker' else 'reward model (the higher score wins)'}. "
          f"Bradley–Terry ratings on the Elo scale with 95% bootstrap intervals ({summary['n_boot']} resamples of the battles).", "",
          md_table(["#", "model", "rating", "95% CI", "W", "L", "T", "right (all)"] + kinds,
                   [[i + 1, r["model"], r["rating"], f"[{r['lo']}, {r['hi']}]", r["wins"], r["losses"], r["ties"],
                     f"{100 * acc[r['model']]['all']:.0f}%"] + [f"{100 * acc[r['model']][k]:.0f}%" for k in kinds]
                    for i, r in enumerate(rows)]), "",
          "Win rate of the row against the column (ties count half):", "",
          md_table(["", *names], [[a] + [("-" if w[a][b] is None else f"{w[a][b]:.2f}") for b in names] for a in names]),
          "", "Checker accuracy, each model against the next one down (paired bootstrap over the same prompts):", "",
          md_table(["difference", "95% CI"], [[name, fmt_diff(d)] for name, d in summary["diffs"].items()]),
          "", "![arena](report/arena.png)"]
    if "human" in summary:
        hr = summary["human"]["leaderboard"]
        md += ["", f"People's votes from the web page ({summary['human']['n_battles']}):", "",
               md_table(["model", "rating", "95% CI", "votes"], [[r["model"], r["rating"], f"[{r['lo']}, {r['hi']}]",
                                                                   r["votes"]] for r in hr])]
    return "\n".join(md)


def cli(argv: list[str]) -> None:
    parser = make_parser("chatforge arena", "rank the run's models against each other on held-out prompts")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="also play a chat checkpoint under NAME (repeatable)")
    add_config_args(parser, ArenaConfig)
    args = parser.parse_args(argv)
    print_config(cfg := config_from_args(ArenaConfig, args), "arena config")
    print0(run_arena(cfg, args.model)[0])
