"""The CORE metric: the base-model score of DCLM (Li et al. 2024, "DataComp-LM", section 3.5 and
appendix G), as nanochat runs it.

CORE is an average over a fixed suite of in-context-learning tasks, each scored without generation,
by the model's likelihoods only. Every task is one of three kinds (the MosaicML gauntlet formats):

    multiple_choice    same context, K candidate continuations  {query, choices, gold}
                       -> pick the choice whose tokens have the lowest mean loss
    schema             K candidate contexts, one continuation     {context_options, continuation, gold}
                       -> pick the context under which the continuation has the lowest mean loss
    language_modeling  one context, one continuation              {context, continuation}
                       -> correct iff greedy decoding reproduces every continuation token

Prompts put ``shots`` solved examples first (drawn per item from the other items with
``random.Random(1234 + index)``), each followed by a blank line, then the item; the task's
``delimiter`` separates context from continuation. Accuracy is then *centered* against the task's
random baseline b (the chance accuracy: 1/K for K balanced choices, 0 for open answers, the majority
class 0.62 for BoolQ):

    centered = (accuracy - b) / (1 - b)          # 0 = chance, 1 = perfect

and CORE is the mean of the centered accuracies. The suite, few-shot counts, delimiters and
baselines below are those of DCLM's ``core`` task list as nanochat's eval bundle ships it
(core.yaml + eval_meta_data.csv). A task whose file is not under the data folder is skipped and
named; an average over fewer than the 22 tasks is not comparable with published CORE numbers, so it
is reported with its task count.

Batching: the sequences of many items are packed into one forward pass (sorted by length, padded on
the right with ``<|bos|>``, which a causal model never looks at when scoring earlier positions), and
the LM head runs only on the positions that are scored. ``score_rows_naive`` is the slow twin: one
unpadded forward per sequence through ``model(x)``; tests check that both agree.

    chatforge eval --suite core --run speedrun --stage base --limit 50
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from chatforge.common import CfError, autocast_ctx, data_dir, print0, read_jsonl
from chatforge.train.pretrain import Dist, evaluate_bpb, token_bytes
from chatforge.report import condition, experiment, fmt_rate, md_table, update_results
from chatforge.data.shards import TokenLoader, read_shards_json

KINDS = ("multiple_choice", "schema", "language_modeling")


@dataclass(frozen=True)
class CoreTask:
    label: str
    file: str            # file name, searched for anywhere under the data folder
    kind: str            # one of KINDS
    shots: int           # few-shot examples before each item
    delimiter: str       # between context and continuation
    baseline: float      # random-guess accuracy (fraction)


# DCLM's CORE suite (22 tasks): label, file, kind, shots, delimiter, random baseline.
CORE_TASKS: tuple[CoreTask, ...] = tuple(CoreTask(*t) for t in [
    ("hellaswag_zeroshot", "hellaswag.jsonl", "multiple_choice", 0, " ", 0.25),
    ("jeopardy", "jeopardy_all.jsonl", "language_modeling", 10, "\nAnswer: ", 0.0),
    ("bigbench_qa_wikidata", "bigbench_qa_wikidata.jsonl", "language_modeling", 10, " ", 0.0),
    ("arc_easy", "arc_easy.jsonl", "multiple_choice", 10, "\nAnswer: ", 0.25),
    ("arc_challenge", "arc_challenge.jsonl", "multiple_choice", 10, "\nAnswer: ", 0.25),
    ("copa", "copa.jsonl", "multiple_choice", 0, " ", 0.50),
    ("commonsense_qa", "commonsense_qa.jsonl", "multiple_choice", 10, " ", 0.25),
    ("piqa", "piqa.jsonl", "multiple_choice", 10, "\nAnswer: ", 0.50),
    ("openbook_qa", "openbook_qa.jsonl", "multiple_choice", 0, " ", 0.25),
    ("lambada_openai", "lambada_openai.jsonl", "language_modeling", 0, " ", 0.0),
    ("hellaswag", "hellaswag.jsonl", "multiple_choice", 10, " ", 0.25),
    ("winograd", "winograd_wsc.jsonl", "schema", 0, " ", 0.50),
    ("winogrande", "winogrande.jsonl", "schema", 0, " ", 0.50),
    ("bigbench_dyck_languages", "bigbench_dyck_languages.jsonl", "language_modeling", 10, " ", 0.0),
    ("agi_eval_lsat_ar", "agi_eval_lsat_ar.jsonl", "multiple_choice", 3, " ", 0.25),
    ("bigbench_cs_algorithms", "bigbench_cs_algorithms.jsonl", "language_modeling", 10, " ", 0.0),
    ("bigbench_operators", "bigbench_operators.jsonl", "language_modeling", 10, " ", 0.0),
    ("bigbench_repeat_copy_logic", "bigbench_repeat_copy_logic.jsonl", "language_modeling", 10, " ", 0.0),
    ("squad", "squad.jsonl", "language_modeling", 10, " ", 0.0),
    ("coqa", "coqa.jsonl", "language_modeling", 0, " ", 0.0),
    ("boolq", "boolq.jsonl", "multiple_choice", 10, "\nAnswer: ", 0.62),
    ("bigbench_language_identification", "bigbench_language_identification.jsonl", "multiple_choice", 10,
     " ", 0.25),
])

LIMIT_SEED = 1337     # with --limit, items are shuffled with this seed and the first N kept (nanochat)


# ----------------------------------------------------------------------------- loading

def find_task_file(task: CoreTask, root: Path) -> Path | None:
    """The task's file anywhere under ``root`` (the shared-data layout and nanochat's eval_bundle
    layout both work): the first match in sorted order, None when absent."""
    hits = sorted(root.rglob(task.file)) if root.is_dir() else []
    return hits[0] if hits else None


def _normalize(kind: str, ex: dict, where: str) -> dict:
    """Check one item's fields for its kind; HellaSwag's original {ctx, endings, label} becomes MC."""
    if kind == "multiple_choice" and {"ctx", "endings", "label"} <= ex.keys():
        ex = {"query": ex["ctx"], "choices": ex["endings"], "gold": ex["label"]}
    need = {"multiple_choice": ("query", "choices", "gold"), "schema": ("context_options", "continuation", "gold"),
            "language_modeling": ("context", "continuation")}[kind]
    missing = [k for k in need if k not in ex]
    if missing:
        raise CfError(f"{where}: expected fields {', '.join(need)} for a {kind} item (missing {', '.join(missing)})")
    options = ex.get("choices", ex.get("context_options"))
    if options is not None:
        if not (isinstance(options, list) and len(options) >= 2 and all(isinstance(o, str) for o in options)):
            raise CfError(f"{where}: expected a list of at least 2 strings as options")
        if not (isinstance(ex["gold"], int) and 0 <= ex["gold"] < len(options)):
            raise CfError(f"{where}: gold must be an index into the {len(options)} options, got {ex['gold']!r}")
    return ex


def load_task_items(task: CoreTask, path: Path) -> list[dict]:
    items = [_normalize(task.kind, ex, f"{path}:{n}") for n, ex in read_jsonl(path, what=f"{task.label} data")]
    if len(items) <= task.shots:
        raise CfError(f"{path}: {len(items)} items, need more than {task.shots} (the few-shot examples)")
    return items


# ----------------------------------------------------------------------------- prompts and spans

def fewshot_examples(items: Sequence[dict], idx: int, shots: int) -> list[dict]:
    if shots <= 0:
        return []
    rng = random.Random(1234 + idx)
    return [items[i] for i in rng.sample([i for i in range(len(items)) if i != idx], shots)]


def render_prompts(kind: str, item: dict, delim: str, shots: Sequence[dict]) -> list[str]:
    """The full text of every sequence scored for ``item``: one per option (MC, schema), or the
    prompt without and with the continuation (LM)."""
    if kind == "multiple_choice":
        head = "".join(f"{ex['query']}{delim}{ex['choices'][ex['gold']]}\n\n" for ex in shots)
        return [f"{head}{item['query']}{delim}{c}" for c in item["choices"]]
    if kind == "schema":
        head = "".join(f"{ex['context_options'][ex['gold']]}{delim}{ex['continuation']}\n\n" for ex in shots)
        return [f"{head}{c}{delim}{item['continuation']}" for c in item["context_options"]]
    # language modeling: contexts are trimmed (some datasets carry trailing spaces); the prompt without
    # the continuation is stripped so its tokens are a clean prefix of the prompt with it
    head = "".join(f"{ex['context'].strip()}{delim}{ex['continuation']}\n\n" for ex in shots)
    prompt = f"{head}{item['context'].strip()}{delim}"
    return [prompt.strip(), prompt + item["continuation"]]


def common_length(seqs: Sequence[Sequence[int]], from_end: bool = False) -> int:
    """Length of the longest common prefix (or suffix) of token sequences."""
    n = min(len(s) for s in seqs)
    for i in range(n):
        j = -1 - i if from_end else i
        if any(s[j] != seqs[0][j] for s in seqs):
            return i
    return n


def item_rows(kind: str, token_seqs: list[list[int]], max_len: int) -> list[tuple[list[int], int, int]]:
    """(tokens, start, end) per scored sequence: tokens[start:end] is the span whose loss counts.

    MC: the span is each choice after the common prefix; schema: the common suffix (the shared
    continuation); LM: the continuation, i.e. what the prompt with it adds to the prompt without.
    Sequences longer than ``max_len`` lose tokens on the left (the span is at the end)."""
    if kind == "multiple_choice":
        start = common_length(token_seqs)
        spans = [(s, start, len(s)) for s in token_seqs]
    elif kind == "schema":
        suffix = common_length(token_seqs, from_end=True)
        spans = [(s, len(s) - suffix, len(s)) for s in token_seqs]
    else:
        without, with_ = token_seqs
        spans = [(with_, common_length([without, with_]), len(with_))]
    rows = []
    for toks, s, e in spans:
        s = min(max(s, 1), e - 1)            # at least one scored token, and a position before it
        crop = max(0, len(toks) - max_len)
        rows.append((toks[crop:], max(1, s - crop), e - crop))
    return rows


# ----------------------------------------------------------------------------- scoring

@torch.no_grad()
def score_rows(model, rows: Sequence[tuple[list[int], int, int]], pad_id: int, device: str = "cpu",
               batch_tokens: int = 16384) -> list[tuple[float, bool]]:
    """(mean loss over the span, greedy decoding reproduces the span) for each row, batched.

    Rows are sorted by length and packed into batches of at most ``batch_tokens`` padded tokens; the
    LM head runs only at the positions that predict span tokens."""
    out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    i = 0
    while i < len(order):
        j = i + 1        # grow the batch while the (longest row) x (rows) budget holds
        while j < len(order) and len(rows[order[j]][0]) * (j + 1 - i) <= batch_tokens:
            j += 1
        batch = [order[k] for k in range(i, j)]
        T = len(rows[batch[-1]][0])
        x = torch.full((len(batch), T), pad_id, dtype=torch.long)
        b_idx, t_idx, tgt, owner = [], [], [], []
        for r, ri in enumerate(batch):
            toks, s, e = rows[ri]
            x[r, :len(toks)] = torch.tensor(toks)
            b_idx += [r] * (e - s)
            t_idx += range(s - 1, e - 1)          # position p predicts token p + 1
            tgt += toks[s:e]
            owner += [r] * (e - s)
        with autocast_ctx(device):
            h = model.forward_hidden(x.to(device))                              # (B, T, C)
            at = (torch.tensor(b_idx, device=h.device), torch.tensor(t_idx, device=h.device))
            logits = model.lm_head(h[at]).float()                               # (N, V): scored positions only
        tgt_t = torch.tensor(tgt, device=logits.device)
        losses = F.cross_entropy(logits, tgt_t, reduction="none").cpu()         # (N,)
        hits = (logits.argmax(-1) == tgt_t).cpu()                               # (N,)
        owner_t = torch.tensor(owner)
        for r, ri in enumerate(batch):
            sel = owner_t == r
            out[ri] = (losses[sel].mean().item(), bool(hits[sel].all()))
        i = j
    return out


@torch.no_grad()
def score_rows_naive(model, rows: Sequence[tuple[list[int], int, int]], device: str = "cpu") -> list[tuple[float, bool]]:
    """The slow, obviously-correct twin of ``score_rows``: one unpadded full forward per row."""
    out = []
    for toks, s, e in rows:
        with autocast_ctx(device):
            logits = model(torch.tensor([toks], device=device))[0].float()       # (T, V)
        pred, target = logits[s - 1:e - 1], torch.tensor(toks[s:e], device=logits.device)
        out.append((F.cross_entropy(pred, target).item(), bool((pred.argmax(-1) == target).all())))
    return out


def decide(kind: str, scores: Sequence[tuple[float, bool]], gold: int | None) -> bool:
    """Is the item answered correctly, given its rows' (mean loss, greedy match)?"""
    if kind == "language_modeling":
        return scores[0][1]
    losses = [s[0] for s in scores]
    return losses.index(min(losses)) == gold


def evaluate_task(model, tokenizer, task: CoreTask, items: list[dict], limit: int | None = None,
                  device: str = "cpu", batch_tokens: int = 16384, batched: bool = True) -> dict[str, Any]:
    """Accuracy and centered accuracy of one task (on the first ``limit`` items after a seeded shuffle)."""
    idxs = list(range(len(items)))
    if limit is not None and limit < len(items):
        random.Random(LIMIT_SEED).shuffle(idxs)
        idxs = idxs[:limit]
    max_len = model.config.seq_len
    rows, owner = [], []
    for idx in idxs:
        prompts = render_prompts(task.kind, items[idx], task.delimiter, fewshot_examples(items, idx, task.shots))
        seqs = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts]
        for row in item_rows(task.kind, seqs, max_len):
            rows.append(row)
            owner.append(idx)
    scores = (score_rows(model, rows, tokenizer.bos_id, device, batch_tokens) if batched
              else score_rows_naive(model, rows, device))
    per_item: dict[int, list] = {}
    for idx, sc in zip(owner, scores):
        per_item.setdefault(idx, []).append(sc)
    outcomes = [decide(task.kind, per_item[i], items[i].get("gold")) for i in idxs]
    acc = sum(outcomes) / len(idxs)
    return {"accuracy": acc, "centered": (acc - task.baseline) / (1 - task.baseline), "n": len(idxs),
            "correct": sum(outcomes), "outcomes": outcomes, "baseline": task.baseline, "shots": task.shots,
            "kind": task.kind}


def select_tasks(names: Sequence[str] | None) -> list[CoreTask]:
    if not names:
        return list(CORE_TASKS)
    by_label = {t.label: t for t in CORE_TASKS}
    bad = [n for n in names if n not in by_label]
    if bad:
        raise CfError(f"--tasks: unknown CORE task(s) {', '.join(bad)}; expected some of {', '.join(by_label)}")
    return [by_label[n] for n in names]


def run_core(model, tokenizer, root: Path | None = None, limit: int | None = None, device: str = "cpu",
             tasks: Sequence[str] | None = None, batch_tokens: int = 16384) -> dict[str, Any]:
    """Every CORE task found under ``root`` (default: the shared-data folder); per-task results and
    the mean centered accuracy ("core") over the tasks that ran."""
    root = Path(root) if root is not None else data_dir()
    results: dict[str, Any] = {}
    missing = []
    t0 = time.perf_counter()
    for task in select_tasks(tasks):
        path = find_task_file(task, root)
        if path is None:
            missing.append(task.label)
            continue
        r = evaluate_task(model, tokenizer, task, load_task_items(task, path), limit, device, batch_tokens)
        results[task.label] = {**r, "file": str(path)}
        print0(f"core: {task.label:<34} acc {r['accuracy']:.3f}  centered {r['centered']:+.3f}  (n={r['n']})")
    if not results:
        raise CfError(f"{root}: no CORE task files found (expected e.g. {CORE_TASKS[0].file}); "
                      f"set CHATFORGE_DATA or run `chatforge eval fetch`")
    core = sum(r["centered"] for r in results.values()) / len(results)
    return {"core": core, "n_tasks": len(results), "n_suite": len(CORE_TASKS), "limit": limit,
            "tasks": results, "missing": missing, "data_dir": str(root),
            "seconds": round(time.perf_counter() - t0, 1)}


# ----------------------------------------------------------------------------- bits per byte

def val_bpb(model, tokenizer, shards_dir: Path, device: str = "cpu", max_tokens: int = 262144,
            batch_size: int = 8) -> float | None:
    """Validation bits per byte on the run's val shards (None without a val split), on at most
    ``max_tokens`` targets, with pretraining's own evaluator."""
    try:
        meta = read_shards_json(shards_dir)
    except CfError:
        return None
    if not meta["splits"].get("val"):
        return None
    T = model.config.seq_len
    val_tokens = sum(s["tokens"] for s in meta["splits"]["val"])
    B = max(1, min(batch_size, (val_tokens - 1) // T))
    try:
        loader = TokenLoader(shards_dir, "val", B, T)
    except CfError:
        return None
    steps = max(1, min(loader.n_windows, max_tokens // (B * T)))
    _, bpb = evaluate_bpb(model, loader, steps, token_bytes(tokenizer, model.config.vocab_size), device,
                          "float32" if device == "cpu" else "auto", Dist(device=device))
    return bpb


# ----------------------------------------------------------------------------- report

def format_core(res: dict[str, Any]) -> str:
    rows = [[label, r["kind"], r["shots"], r["n"], fmt_rate(condition(r["outcomes"])), r["baseline"], r["centered"]]
            for label, r in res["tasks"].items()]
    md = ["## CORE (DCLM base-model suite)", "",
          md_table(["task", "kind", "shots", "n", "accuracy [95% CI]", "random", "centered"], rows), "",
          f"**CORE {res['core']:.4f}** (mean centered accuracy over {res['n_tasks']}/{res['n_suite']} tasks"
          + (f", at most {res['limit']} items each" if res["limit"] else "") + ")"]
    if res.get("bpb") is not None:
        md.append(f"val bits per byte: **{res['bpb']:.4f}**")
    if res["missing"]:
        md.append(f"not found under {res['data_dir']}: {', '.join(res['missing'])} "
                  "(a partial average is not comparable with published CORE)")
    return "\n".join(md) + "\n"


def results_entry(res: dict[str, Any]) -> dict[str, Any]:
    """The results.json object (report.experiment's schema): one condition per task (k, n, rate,
    Wilson interval) plus the CORE figures; per-item outcomes and the wall-clock ``seconds`` stay out
    of the file (one seed gives one results.json on any machine)."""
    tasks = {label: {k: v for k, v in r.items() if k != "outcomes"} for label, r in res["tasks"].items()}
    return experiment({label: r["outcomes"] for label, r in res["tasks"].items()},
                      **{**{k: v for k, v in res.items() if k not in ("tasks", "seconds")}, "tasks": tasks})


def core_cli(model, tokenizer, rd: Path, limit: int | None, device: str, tasks: Sequence[str] | None,
             root: Path | None = None) -> dict[str, Any]:
    """``chatforge eval --suite core``: run, print, and record under id "core" in results.json."""
    res = run_core(model, tokenizer, root, limit, device, tasks)
    res["bpb"] = val_bpb(model, tokenizer, rd / "shards", device)
    print0(format_core(res))
    if rd.is_dir():
        update_results(rd, "core", results_entry(res))
        print0(f"core: recorded in {rd / 'results.json'}")
    return res
