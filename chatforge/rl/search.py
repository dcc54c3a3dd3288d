"""Test-time search: spend more samples per question instead of more training.

A short tutorial
----------------
Draw N answers from the model and pick one. How you pick is what matters:

* **majority vote** (self-consistency, Wang et al. 2022): the most frequent final answer. Needs no
  verifier; works when wrong answers scatter and right ones agree.
* **best-of-N with an exact checker**: any correct sample wins, i.e. the oracle pass@N. Real only
  when answers can be verified (unit tests, a proof checker); it is the ceiling of every selector.
* **best-of-N with a reward model**: the sample the RM scores highest (Stiennon et al. 2020). Only as
  good as the RM; with a learned RM it can pick confident wrong answers.

All three see the *same* N samples (equal budget): the table is built from one set of N_max draws per
question, using the first N for each N. Best-of-N is itself a policy, and its KL to the base policy is
at most log N - (N-1)/N nats (Stiennon et al. 2020, appendix; Beirami et al. 2024 show the bound is
tight when the N samples are distinct) -- a useful yardstick for how far RL moves a model.

**Expert iteration** (Anthony et al. 2017; STaR, Zelikman et al. 2022; rejection-sampling fine-tuning
in Llama 2): sample N, keep the solutions the checker accepts, fine-tune on them with SFT, repeat.
It is the simplest RL: a policy gradient with reward 0/1 and no negative examples.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Sequence

from chatforge.assistant.tasks import exact_reward, extract_answer, normalize_number, prompt_tokens
from chatforge.common import CfError, print0, wilson
from chatforge.rl.rollout import make_engine, response_text, sample_group, stop_ids
from chatforge.train.sft import train_sft


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent non-empty answer; ties go to the one seen first. None if there is none."""
    valid = [a for a in answers if a is not None]
    if not valid:
        return None
    counts = Counter(valid)
    best = max(counts.values())
    return next(a for a in valid if counts[a] == best)


def best_of_n(scores: Sequence[float]) -> int:
    """Index of the highest score (first on ties)."""
    if not scores:
        raise CfError("best_of_n: no candidates")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def bon_kl_bound(n: int) -> float:
    """Upper bound on KL(best-of-n || base) in nats: log n - (n-1)/n."""
    if n < 1:
        raise ValueError("n must be >= 1")
    return math.log(n) - (n - 1) / n


def search_table(samples: list[list[str]], problems: Sequence[dict], Ns: Sequence[int],
                 scorer: Callable[[list[str], list[dict]], list[float]] | None = None,
                 true_score: Callable[[str, str], float] | None = None) -> list[dict]:
    """Accuracy vs N for each selector, from pre-drawn samples (equal budget: the first N of each list).

    scorer: reward-model scores for a list of texts of one problem; true_score(text, gold): the hidden
    rule (synthetic preferences), reported for the RM's pick.
    """
    n_max = min(len(s) for s in samples)
    rm_scores = [scorer(s, [p] * len(s)) for s, p in zip(samples, problems)] if scorer else None
    rows = []
    for N in Ns:
        if N > n_max:
            raise CfError(f"search: N={N} > {n_max} samples drawn")
        first = vote = oracle = rm = 0.0
        rm_true = 0.0
        for j, (s, p) in enumerate(zip(samples, problems)):
            cand = s[:N]
            correct = [exact_reward(t, p["answer"]) for t in cand]
            first += correct[0]
            mv = majority_vote([extract_answer(t) for t in cand])
            vote += float(mv is not None and mv == normalize_number(str(p["answer"])))
            oracle += max(correct)
            if rm_scores is not None:
                k = best_of_n(rm_scores[j][:N])
                rm += correct[k]
                if true_score is not None:
                    rm_true += true_score(cand[k], p["answer"])
        n = len(problems)
        row = {"N": N, "sample": first / n, "majority": vote / n, "bon_oracle": oracle / n,
               "bon_kl_bound": bon_kl_bound(N)}
        if rm_scores is not None:
            row["bon_rm"] = rm / n
            if true_score is not None:
                row["bon_rm_true_score"] = rm_true / n
        lo, hi = wilson(int(round(vote)), n)
        row["majority_ci"] = (lo, hi)
        rows.append(row)
    return rows


def expert_iteration(policy, tokenizer, problems: Sequence[dict], n: int, max_new_tokens: int, sft_cfg,
                     rounds: int = 1, temperature: float = 1.0, seed: int = 0) -> dict:
    """Sample n per problem, keep the checker-accepted solutions (one per distinct text), SFT on them
    (reusing chatforge.sft's training loop in-process), ``rounds`` times. Returns per-round counts.

    A kept sample becomes a conversation by parsing its tokens back (tokenizer.parse_conversation),
    so tool calls stay tool calls and injected tool outputs stay untrained, exactly as in SFT data.
    """
    stops = stop_ids(tokenizer)
    log = []
    for r in range(rounds):
        engine = make_engine(policy, tokenizer)
        convs, solved = [], 0
        for i, p in enumerate(problems):
            prompt = prompt_tokens(tokenizer, p["question"])
            seen: set[str] = set()
            for resp, _ in sample_group(engine, prompt, n, max_new_tokens, temperature, None, seed + 1000 * r + i, stops):
                text = response_text(tokenizer, resp, stops)
                if text in seen or exact_reward(text, p["answer"]) != 1.0 or not resp or resp[-1] not in stops[:1]:
                    continue  # wrong, duplicate, or cut short (no <|assistant_end|>)
                try:
                    convs.append(tokenizer.parse_conversation(prompt + resp))
                    seen.add(text)
                except CfError:
                    continue  # malformed tool markup: not a demonstration worth copying
            solved += bool(seen)
        log.append({"round": r, "kept": len(convs), "solved_frac": solved / max(1, len(problems))})
        print0(f"expert iteration round {r}: kept {len(convs)} solutions, {solved}/{len(problems)} problems solved")
        if not convs:
            break
        train_sft(sft_cfg, policy, tokenizer, convs)
        policy.eval()
    return {"rounds": log}


# ----------------------------------------------------------------------------- best-of-N curves

BON_SELECTORS = ("checker", "rm", "majority")


def bon_pick(selector: str, N: int, correct: Sequence[bool], scores: Sequence[float],
             answers: Sequence[str | None]) -> int:
    """Which of the first ``N`` candidates a selector picks: ``checker`` the first correct one (the
    exact checker, an upper bound), ``rm`` the highest reward-model score, ``majority`` the first
    candidate giving the most common answer; index 0 when nothing qualifies."""
    if selector == "checker":
        return next((i for i in range(N) if correct[i]), 0)
    if selector == "rm":
        return best_of_n(list(scores[:N]))
    if selector == "majority":
        mv = majority_vote(answers[:N])
        return next((i for i in range(N) if answers[i] == mv), 0)
    raise CfError(f"best-of-N selector: expected one of {BON_SELECTORS}, got {selector!r}")


def bon_outcomes(Ns: Sequence[int], correct: list[list[bool]], gold: list[list[float]], scores: list[list[float]],
                 answers: list[list[str | None]]) -> dict[str, dict[int, dict[str, list[float]]]]:
    """Per selector and N, the per-prompt correctness and gold score of the pick (from pre-drawn
    candidates: the first N of each prompt's list, so every N and selector sees the same samples)."""
    out: dict[str, dict[int, dict[str, list[float]]]] = {}
    for sel in BON_SELECTORS:
        out[sel] = {}
        for N in Ns:
            picks = [bon_pick(sel, N, c, s, a) for c, s, a in zip(correct, scores, answers)]
            out[sel][N] = {"correct": [float(c[i]) for c, i in zip(correct, picks)],
                           "gold": [g[i] for g, i in zip(gold, picks)]}
    return out
