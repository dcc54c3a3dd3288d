"""The RL speedrun stages: ``run_rl_stage`` (GRPO on worked chains against a shuffled-reward control,
measured on >= 300 held-out chains with paired bootstrap differences), the preference experiments of
``run_preference_stage``, and the ``--full`` ``run_rlhf_stage``: reward model, RLHF against it, over-optimization, DPO, search.

Everything runs on the synthetic preferences of ``chatforge.reward`` (a hidden rule: correct AND
polite AND concise, judged by noisy Bradley-Terry annotators), so each learned quantity can be
compared with the truth:

1. reward model on the pairs -> held-out pair accuracy (vs the noisy labels and vs the rule);
2. RLHF (``grpo.train_rl(algo="reinforce")``: RM reward, KL-in-reward, group baseline) from the SFT model,
   measuring every few steps, on a fixed probe of held-out prompts (same sampling seeds each time), the
   RM score, the hidden true score and the KL to the SFT model; the plot of both scores against KL
   shows where they part (Gao et al. 2022, "Scaling Laws for Reward Model
   Overoptimization");
3. DPO on the same pairs from the same SFT model;
4. test-time search on the held-out problems: majority vote / best-of-N (checker) / best-of-N (RM)
   at equal budgets N = 1, 2, 4, 8, with the best-of-N KL bound; and one round of expert iteration.
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import replace
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import torch

from chatforge.assistant.convo import parse_reply, sample_replies_many
from chatforge.assistant.tasks import (drop_overlong, exact_reward, extract_answer, math_correct, prompt_tokens,
                                       with_style, world_problems)
from chatforge.common import CfError, make_config, paired_bootstrap, print0, save_figure
from chatforge.model.checkpoint import load_model
from chatforge.report import experiment, fmt_diff, fmt_rate, md_table, paired_diff, update_results
from chatforge.rl.dpo import DPOConfig, train_dpo
from chatforge.rl.grpo import RLConfig, train_rl
from chatforge.rl.preferences import annotate, PrefPair, split_pairs, synthetic_preferences, true_score
from chatforge.rl.reward import RMConfig, rm_reward_fn, score_texts, train_rm
from chatforge.rl.rollout import (make_engine, pack_sequences, response_text, sample_group, sample_texts, stop_ids,
                                  token_logprobs)
from chatforge.rl.search import bon_kl_bound, bon_outcomes, expert_iteration, search_table
from chatforge.train.sft import SFTConfig

matplotlib.use("Agg")  # figures are written to files; no display


def greedy_eval(policy, tokenizer, problems: list[dict], max_new_tokens: int, rm=None, device: str = "cpu") -> dict:
    """Greedy answers -> accuracy, mean hidden true score, mean RM score, mean length (words)."""
    texts = [s[0] for s in sample_texts(make_engine(policy, tokenizer), tokenizer, problems, 1, max_new_tokens, 0.0)]
    out = {"acc": sum(exact_reward(t, p["answer"]) for t, p in zip(texts, problems)) / len(problems),
           "true_score": sum(true_score(t, p["answer"]) for t, p in zip(texts, problems)) / len(problems),
           "words": sum(len(t.split()) for t in texts) / len(problems)}
    if rm is not None:
        out["rm_score"] = sum(rm_reward_fn(rm, tokenizer, device)(texts, problems)) / len(problems)
    return out


# ----------------------------------------------------------------------------- measuring a policy

OUTCOME_SEED = 10_000   # sampling seeds of every policy measurement (item i: OUTCOME_SEED + i): outcomes pair


def policy_outcomes(model, tokenizer, problems: list[dict], k: int, max_new_tokens: int,
                    seed: int = OUTCOME_SEED) -> dict:
    """Per held-out item: greedy correct (0/1), correct of ``k`` samples at T=1, and reply lengths.

    The same seeds for every policy, so two policies' outcomes pair item by item (paired bootstrap)."""
    engine = make_engine(model, tokenizer)
    prompts = [prompt_tokens(tokenizer, p["question"]) for p in problems]
    greedy = sample_replies_many(engine, tokenizer, prompts, 1, max_new_tokens, 0.0, seed)
    text = lambda ids: parse_reply(tokenizer, ids)[0]  # noqa: E731
    return {"greedy": [int(math_correct(text(g[0]), p["answer"])) for g, p in zip(greedy, problems)],
            "correct_of_k": correct_of_k(engine, tokenizer, problems, k, max_new_tokens, seed),
            "k": k, "greedy_len": sum(len(g[0]) for g in greedy) / max(1, len(greedy)),
            "questions": [p["question"] for p in problems], "max_new_tokens": max_new_tokens, "seed": seed}


def correct_of_k(engine, tokenizer, problems: list[dict], k: int, max_new_tokens: int, seed: int) -> list[int]:
    """Per problem: how many of ``k`` samples at T=1 (problem i seeded seed + i) the checker accepts."""
    if not k:
        return [0] * len(problems)
    prompts = [prompt_tokens(tokenizer, p["question"]) for p in problems]
    sampled = sample_replies_many(engine, tokenizer, prompts, k, max_new_tokens, 1.0, seed)
    return [sum(math_correct(parse_reply(tokenizer, ids)[0], p["answer"]) for ids in ss)
            for ss, p in zip(sampled, problems)]


def mixed_outcome_problems(model, tokenizer, problems: list[dict], k: int, max_new_tokens: int,
                           seed: int = 20_000) -> tuple[list[dict], dict]:
    """Difficulty filtering of the RL prompts: keep the training problems on which ``k`` samples of the
    starting policy are neither all right nor all wrong. A GRPO group of all-equal rewards has zero
    advantage and teaches nothing, so filtering keeps the signal per step (DAPO's dynamic sampling, Yu
    et al. 2025, section 3.2, done once before training as in online difficulty filtering). Training
    problems only; the held-out measurement still covers every held-out item."""
    counts = correct_of_k(make_engine(model, tokenizer), tokenizer, problems, k, max_new_tokens, seed)
    kept = [p for p, c in zip(problems, counts) if 0 < c < k]
    return kept, {"screened": len(problems), "k": k, "kept": len(kept), "all_wrong": counts.count(0),
                  "all_right": counts.count(k)}


def measured_experiment(outs: dict[str, dict], baseline: str, **extra) -> dict:
    """results.json object for policies measured by ``policy_outcomes``: greedy accuracy per policy,
    paired differences against ``baseline`` (greedy and sampled pass@1), pass@1 and pass@k."""
    names = [n for n in outs if n != baseline]
    k = outs[baseline]["k"]
    p1 = {n: [c / k for c in o["correct_of_k"]] for n, o in outs.items()} if k else {}
    exp = experiment({n: o["greedy"] for n, o in outs.items()}, [(n, baseline) for n in names],
                     **{"pass@1": {n: sum(v) / len(v) for n, v in p1.items()},
                        f"pass@{k}": {n: sum(c > 0 for c in o["correct_of_k"]) / len(o["correct_of_k"])
                                      for n, o in outs.items()} if k else {},
                        "greedy_len": {n: o["greedy_len"] for n, o in outs.items()}}, **extra)
    if k:
        exp["diffs_pass@1"] = {f"{n} - {baseline}": paired_diff(p1[n], p1[baseline], seed=i)
                               for i, n in enumerate(names)}
    return exp


def measured_table(exp: dict, k_name: str) -> str:
    rows = [[n, fmt_rate(c), f"{exp['pass@1'].get(n, float('nan')):.3f}", f"{exp[k_name].get(n, float('nan')):.3f}",
             f"{exp['greedy_len'][n]:.1f}"] for n, c in exp["conditions"].items()]
    md = md_table(["policy", "greedy accuracy [95% CI] (k/n)", "pass@1 (T=1)", k_name, "greedy reply tokens"], rows)
    diffs = [[f"{name} (greedy)", fmt_diff(d)] for name, d in exp["diffs"].items()]
    diffs += [[f"{name} (pass@1)", fmt_diff(d)] for name, d in exp.get("diffs_pass@1", {}).items()]
    return md + "\n\n" + md_table(["difference", "paired bootstrap 95% CI"], diffs)


def trainable_copy(model, device: str):
    """A trainable copy of a (frozen, eval-mode) model: the policy of RL/DPO starts from the SFT weights."""
    m = copy.deepcopy(model).to(device)
    for p in m.parameters():
        p.requires_grad_(True)
    return m


# ----------------------------------------------------------------------------- the RL stage

def plot_rl_runs(runs: dict[str, list[dict]], path: Path) -> Path:
    """Batch reward and response length per step, one line per run (GRPO vs the shuffled control)."""
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, hist in runs.items():
        steps = [h["step"] for h in hist]
        ax[0].plot(steps, [h["reward"] for h in hist], ".-", label=name)
        ax[1].plot(steps, [h["resp_len"] for h in hist], "-", label=name)
    ax[0].set_xlabel("step"), ax[0].set_title("mean rollout reward"), ax[0].legend(fontsize=7)
    ax[1].set_xlabel("step"), ax[1].set_title("mean response tokens"), ax[1].legend(fontsize=7)
    return save_figure(fig, path)


def run_rl_stage(run_dir_: str | Path, steps: int = 40, budget_s: float = 0.0, device: str = "cpu",
                 eval_problems: int = 400, eval_k: int = 4, style: str = "worked", screen: int = 0,
                 screen_k: int = 4, **overrides) -> tuple[str, dict]:
    """Speedrun stage: GRPO on worked chains from ``<run>/sft`` and the shuffled-reward control (rule
    rewards permuted within each group: the same zero-variance groups, no signal), both ``steps``
    steps from the same SFT weights and seeds; writes ``<run>/rl/`` (the GRPO policy) and
    results.json id ``rl`` (conditions sft, grpo, control on ``eval_problems`` held-out chains).
    ``budget_s`` (opt-in) may stop GRPO earlier; the control then runs as many steps. ``screen`` > 0:
    both train only on those of ``screen`` training chains where ``screen_k`` samples of the SFT model
    disagree (``mixed_outcome_problems``)."""
    rd = Path(run_dir_)
    t0 = time.perf_counter()
    ck = load_model(rd, device, stage="sft", what="sft")
    tok, L = ck.tokenizer, ck.model.config.seq_len
    base = dict(run=str(rd), init=str(rd / "sft"), out=str(rd / "rl"), task="world", style=style, steps=steps,
                prompts_per_step=8, group_size=8, max_new_tokens=80, lr=1e-4, eval_problems=0, eval_k=0,
                eval_every=0, time_budget=budget_s, device=device)
    cfg = make_config(RLConfig, **{**base, **overrides})
    train = drop_overlong(tok, with_style(world_problems(rd, "train", kinds=("chain",)), style), L, cfg.max_new_tokens)
    test = drop_overlong(tok, with_style(world_problems(rd, "test", kinds=("chain",)), style), L,
                         cfg.max_new_tokens)[:eval_problems]
    screening = {}
    if screen:
        pool = random.Random(cfg.seed).sample(train, min(screen, len(train)))
        kept, screening = mixed_outcome_problems(ck.model, tok, pool, screen_k, cfg.max_new_tokens)
        print0(f"rl: difficulty filter kept {len(kept)} of {screening['screened']} training chains "
               f"({screening['all_wrong']} all wrong, {screening['all_right']} all right in {screen_k} samples)")
        if len(kept) >= cfg.prompts_per_step:
            train = kept
        else:
            print0(f"!!! rl: fewer than {cfg.prompts_per_step} mixed-outcome chains: training on every chain, "
                   "unfiltered")
            screening["used"] = False
    outs = {"sft": policy_outcomes(ck.model, tok, test, eval_k, cfg.max_new_tokens)}
    runs: dict[str, dict] = {}
    for name, reward, save in (("grpo", "rule", True), ("control", "shuffled", False)):
        rcfg = replace(cfg, reward=reward, steps=runs["grpo"]["steps"] if runs else cfg.steps,
                       time_budget=cfg.time_budget if not runs else 0.0)
        policy = trainable_copy(ck.model, device)
        path, m = train_rl(rcfg, policy=policy, tokenizer=tok, ref=ck.model, train_problems=train, eval_problems=[],
                           save=save, before={})
        runs[name] = {**m, "path": path}
        outs[name] = policy_outcomes(policy.eval(), tok, test, eval_k, cfg.max_new_tokens)
    curves = {n: [{k: h[k] for k in ("step", "reward", "resp_len", "zero_var_frac", "acc") if k in h}
                  for h in m["history"]] for n, m in runs.items()}
    zero_var = {n: sum(h["zero_var_frac"] for h in m["history"]) / max(1, len(m["history"])) for n, m in runs.items()}
    exp = measured_experiment(outs, "sft", task=f"chains of 2-5 steps, {style} style", steps=runs["grpo"]["steps"],
                              group_size=cfg.group_size, prompts_per_step=cfg.prompts_per_step,
                              zero_variance_share=zero_var, curves=curves, difficulty_filter=screening)
    update_results(rd, "rl", exp)
    fig = plot_rl_runs({"GRPO": runs["grpo"]["history"], "control (shuffled rewards)": runs["control"]["history"]},
                       rd / "report" / "rl_reward.png")
    seconds = time.perf_counter() - t0
    # The target is read on pass@1 at T = 1, the quantity GRPO maximises (its expected reward): RL
    # sharpens the sampling distribution; greedy decoding already takes the mode and moves less
    # (both are in the table and in results.json).
    sampled = exp.get("diffs_pass@1") or exp["diffs"]   # eval_k = 0: greedy only
    g, c = sampled["grpo - sft"], sampled["control - sft"]
    gg = exp["diffs"]["grpo - sft"]
    md = ["## RL: GRPO on worked chains, with a shuffled-reward control (`rl`)", "",
          f"{exp['steps']} steps x {cfg.prompts_per_step} problems x {cfg.group_size} samples (T={cfg.temperature}), "
          f"reward = exact answer + {cfg.format_weight} x format, KL coef {cfg.kl_coef}, lr {cfg.optim.lr}; the control "
          f"permutes each group's rewards (same zero-variance groups, no link to the response). Zero-variance "
          f"groups (no gradient): GRPO {100 * zero_var['grpo']:.0f}%, control {100 * zero_var['control']:.0f}%. "
          f"Held-out: {len(test)} chains never in SFT or RL; pass@1/pass@{eval_k} from {eval_k} samples."
          + (f" Training chains: the {screening['kept']} of {screening['screened']} screened on which {screen_k} "
             f"samples of the SFT model disagree ({screening['all_wrong']} all wrong, {screening['all_right']} all "
             "right: no gradient in a group), for both runs." if screening.get("used", True) and screening else ""), "",
          measured_table(exp, f"pass@{eval_k}"), "",
          f"- GRPO - SFT, pass@1 at T = 1: {fmt_diff(g)} (target >= +5 points with the interval above 0: "
          f"{'met' if g['delta'] >= 0.05 and g['ci'][0] > 0 else 'MISSED'}); greedy: {fmt_diff(gg)}.",
          f"- control - SFT, pass@1 at T = 1: {fmt_diff(c)} (target: interval contains 0: "
          f"{'met' if c['ci'][0] <= 0 <= c['ci'][1] else 'MISSED'}).", "",
          f"![reward and response length]({fig.relative_to(rd).as_posix()})", "", f"RL stage took {seconds:.0f}s."]
    metrics = {"rl_steps": exp["steps"], "rl_seconds": seconds, "rl_sft_acc": exp["conditions"]["sft"]["rate"],
               "rl_grpo_acc": exp["conditions"]["grpo"]["rate"], "rl_control_acc": exp["conditions"]["control"]["rate"],
               "rl_checkpoint": str(runs["grpo"]["path"]), "sft_outcomes": outs["sft"]}
    return "\n".join(md) + "\n", metrics


# ----------------------------------------------------------------------------- preferences (default run)

def own_samples(model, tokenizer, problems: list[dict], n: int, max_new_tokens: int, seed: int) -> list[list[str]]:
    """``n`` sampled (T=1) reply texts of the model to each problem (tool calls left out)."""
    prompts = [prompt_tokens(tokenizer, p["question"]) for p in problems]
    outs = sample_replies_many(make_engine(model, tokenizer), tokenizer, prompts, n, max_new_tokens, 1.0, seed)
    return [[parse_reply(tokenizer, ids)[0] for ids in group] for group in outs]


def own_preferences(problems: list[dict], samples: list[list[str]], rng: random.Random,
                    beta: float = 2.0) -> tuple[list[PrefPair], list[PrefPair]]:
    """Pairs of the policy's own replies to one prompt: (annotated, on-policy).

    annotated: every two replies with different gold scores (``true_score``: correct +2, -0.05 per
    word: the annotators like short answers), labelled by a noisy Bradley-Terry annotator -- what the
    reward model learns from. on-policy: a correct reply against a wrong one, labelled by the checker
    -- what DPO learns from."""
    annotated, on_policy = [], []
    for prob, texts in zip(problems, samples):
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                a, b = texts[i], texts[j]
                sa, sb = true_score(a, prob["answer"]), true_score(b, prob["answer"])
                if a == b or sa == sb:
                    continue
                pick_a = annotate(sa, sb, rng, beta)
                (c, r), (sc, sr) = ((a, b), (sa, sb)) if pick_a else ((b, a), (sb, sa))
                annotated.append(PrefPair([prob["question"]], c, r, f"own/{len(annotated)}",
                                          {"true_chosen": sc, "true_rejected": sr, "flipped": sc < sr}))
                ca, cb = math_correct(a, prob["answer"]), math_correct(b, prob["answer"])
                if ca != cb:
                    on_policy.append(PrefPair([prob["question"]], a if ca else b, b if ca else a, f"dpo/{len(on_policy)}"))
    return annotated, on_policy


def mean_band(values: list[float], seed: int = 0) -> dict:
    """Mean and its bootstrap 95% interval (resampling prompts)."""
    mean, lo, hi = paired_bootstrap(values, [0.0] * len(values), seed=seed)
    return {"mean": mean, "ci": [lo, hi]}


def plot_best_of_n(curves: dict[str, list[dict]], ns: list[int], path: Path) -> Path:
    """Gold score of the pick against N (log scale), one line and bootstrap band per selector."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for sel, pts in curves.items():
        m = [p["mean"] for p in pts]
        ax.plot(ns, m, "o-", label=f"chosen by {sel}")
        ax.fill_between(ns, [p["ci"][0] for p in pts], [p["ci"][1] for p in pts], alpha=0.2)
    ax.set_xscale("log", base=2), ax.set_xticks(ns), ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel("N (samples per prompt)"), ax.set_ylabel("gold score of the pick")
    ax.set_title("best-of-N: gold score (95% bootstrap bands)"), ax.legend(fontsize=8)
    return save_figure(fig, path)


def best_of_n_experiment(rm, tok, problems: list[dict], samples: list[list[str]], ns: list[int], device: str) -> dict:
    """results.json ``best_of_n``: accuracy of each selector's pick at each N (conditions
    ``<selector>_<N>``) and the gold-score curves with bands; the over-optimisation verdict."""
    correct = [[math_correct(t, p["answer"]) for t in ts] for ts, p in zip(samples, problems)]
    gold = [[true_score(t, p["answer"]) for t in ts] for ts, p in zip(samples, problems)]
    answers = [[extract_answer(t) for t in ts] for ts in samples]
    scores = [score_texts(rm, tok, [[p["question"]]] * len(ts), ts, device) for ts, p in zip(samples, problems)]
    outs = bon_outcomes(ns, correct, gold, scores, answers)
    curves = {sel: [mean_band(outs[sel][N]["gold"], seed=N) for N in ns] for sel in outs}
    rm_gold = [p["mean"] for p in curves["rm"]]
    peak = max(range(len(ns)), key=rm_gold.__getitem__)
    checker = curves["checker"]
    monotone = all(checker[i + 1]["ci"][1] >= checker[i]["mean"] for i in range(len(ns) - 1))
    return experiment({f"{sel}_{N}": outs[sel][N]["correct"] for sel in outs for N in ns},
                      [(f"rm_{ns[-1]}", f"rm_{ns[peak]}")] if peak != len(ns) - 1 else [],
                      ns=ns, gold=curves, kl_bound={N: bon_kl_bound(N) for N in ns},
                      rm_peak_n=ns[peak], rm_falls_after_peak=ns[peak] < ns[-1] and curves["rm"][-1]["ci"][1] < rm_gold[peak],
                      checker_monotone_within_bands=monotone)


def run_preference_stage(run_dir_: str | Path, device: str = "cpu", n_prompts: int = 240, n_own: int = 4,
                         n_bon: int = 200, ns: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64), max_new_tokens: int = 80,
                         eval_problems: int = 400, eval_k: int = 4, style: str = "worked",
                         rm_epochs: float = 2.0, dpo_epochs: float = 1.0,
                         sft_outcomes: dict | None = None) -> tuple[str, dict]:
    """Preferences in the default run, on worked chains: a reward model on pairs of the SFT model's
    own replies labelled by the hidden gold rule with annotator noise (held-out pair accuracy);
    best-of-N (N = 1..64) on ``n_bon`` held-out prompts chosen by the checker, the RM and majority
    vote (results.json ``best_of_n`` and one plot); DPO on on-policy pairs (correct vs wrong replies),
    measured like GRPO (``dpo``: conditions sft, dpo). ``sft_outcomes`` (the RL stage's measurement
    of the same SFT model) is reused when it was taken on the same items with the same settings."""
    rd = Path(run_dir_)
    t0 = time.perf_counter()
    ck = load_model(rd, device, stage="sft", what="sft")
    tok, L = ck.tokenizer, ck.model.config.seq_len
    train = drop_overlong(tok, with_style(world_problems(rd, "train", kinds=("chain",)), style), L, max_new_tokens)
    test = drop_overlong(tok, with_style(world_problems(rd, "test", kinds=("chain",)), style), L, max_new_tokens)
    rng = random.Random(0)
    rng.shuffle(train)
    prompts = train[:n_prompts]
    samples = own_samples(ck.model, tok, prompts, n_own, max_new_tokens, 1)
    # held-out pairs come from held-out *prompts*: pairs of a prompt the RM trained on would let it score
    # by remembering that prompt's answer, which says nothing about new prompts (best-of-N's)
    n_val = round(0.15 * len(prompts))
    val, val_on_policy = own_preferences(prompts[:n_val], samples[:n_val], rng)
    pairs, on_policy = own_preferences(prompts[n_val:], samples[n_val:], rng)
    on_policy += val_on_policy
    if not pairs:
        raise CfError(f"{rd}/sft: the SFT model's {n_own} replies to {len(prompts)} prompts never differ in gold "
                      "score; expected a model that answers (train SFT longer)")
    rm, rm_m, _ = train_rm(make_config(RMConfig, run=str(rd), out=str(rd / "rm"), epochs=rm_epochs, lr=3e-4,
                                       device=device), model=trainable_copy(ck.model, device), tokenizer=tok,
                           pairs=pairs, val_pairs=val)
    t_rm = time.perf_counter()
    bon_problems = test[:n_bon]
    bon = best_of_n_experiment(rm, tok, bon_problems, own_samples(ck.model, tok, bon_problems, max(ns),
                                                                  max_new_tokens, 2), list(ns), device)
    bon.update(rm_pairs={"train": len(pairs), "held_out": len(val)}, rm_val_acc=rm_m["val_acc"],
               rm_val_acc_vs_rule=rm_m.get("val_acc_vs_rule"), annotator_agreement=rm_m.get("annotator_agreement"))
    update_results(rd, "best_of_n", bon)
    fig = plot_best_of_n(bon["gold"], list(ns), rd / "report" / "best_of_n.png")
    t_bon = time.perf_counter()
    dpo_pairs, dpo_val = split_pairs(on_policy, 0.1, rng)
    held = test[:eval_problems]
    same = sft_outcomes is not None and (sft_outcomes["questions"], sft_outcomes["k"], sft_outcomes["max_new_tokens"],
                                         sft_outcomes["seed"]) == ([p["question"] for p in held], eval_k, max_new_tokens,
                                                                   OUTCOME_SEED)
    outs = {"sft": sft_outcomes if same else policy_outcomes(ck.model, tok, held, eval_k, max_new_tokens)}
    dpo_m = {"val_acc": float("nan")}
    if dpo_pairs:  # an SFT model that is never (or always) right has no on-policy pairs: DPO is skipped
        dpo_policy, dpo_m, _ = train_dpo(make_config(DPOConfig, run=str(rd), out=str(rd / "dpo"), epochs=dpo_epochs,
                                                     beta=0.1, lr=5e-5, device=device),
                                         policy=trainable_copy(ck.model, device), tokenizer=tok, pairs=dpo_pairs,
                                         val_pairs=dpo_val)
        outs["dpo"] = policy_outcomes(dpo_policy.eval(), tok, held, eval_k, max_new_tokens)
    dpo = measured_experiment(outs, "sft", pairs=len(dpo_pairs), implicit_val_acc=dpo_m["val_acc"])
    update_results(rd, "dpo", dpo)
    seconds = time.perf_counter() - t0
    md = preference_markdown(bon, dpo, rm_m, list(ns), len(bon_problems), fig.relative_to(rd).as_posix(), eval_k)
    md += (f"\n\nPreference stage took {seconds:.0f}s (RM {t_rm - t0:.0f}s, best-of-N {t_bon - t_rm:.0f}s, "
           f"DPO + measurement {time.perf_counter() - t_bon:.0f}s).\n")
    return md, {"pref_seconds": seconds, "rm_val_acc": rm_m["val_acc"], "rm_peak_n": bon["rm_peak_n"],
                "dpo_acc": dpo["conditions"].get("dpo", {}).get("rate")}


def preference_markdown(bon: dict, dpo: dict, rm_m: dict, ns: list[int], n_prompts: int, fig: str, k: int) -> str:
    g = bon["gold"]
    rows = [[N] + [f"{p[i]['mean']:.3f} [{p[i]['ci'][0]:.3f}, {p[i]['ci'][1]:.3f}]" for p in g.values()]
            + [fmt_rate(bon["conditions"][f"{sel}_{N}"]) for sel in g] for i, N in enumerate(ns)]
    d = dpo["diffs"].get("dpo - sft")
    return "\n".join([
        "## Preferences: reward model, best-of-N, DPO (`best_of_n`, `dpo`)", "",
        f"The SFT model's own replies to training chains, paired within a prompt and labelled by a noisy "
        f"Bradley-Terry annotator of the hidden gold rule (correct +2, -0.05 per word); the annotators agree "
        f"with the rule on {100 * (rm_m.get('annotator_agreement') or 0):.0f}% of held-out pairs. Reward model: "
        f"held-out pair accuracy {rm_m['val_acc']:.3f} vs the labels, {rm_m.get('val_acc_vs_rule') or float('nan'):.3f} "
        f"vs the rule ({rm_m['val_pairs']} pairs of 15% of the prompts, held out from its training).", "",
        f"Best-of-N on {n_prompts} held-out chains (the same {ns[-1]} samples per prompt for every N and selector); "
        "gold score of the pick with bootstrap 95% bands, and its accuracy:", "",
        md_table(["N"] + [f"gold: {s}" for s in g] + [f"accuracy: {s}" for s in g], rows), "",
        f"- RM-chosen gold score peaks at N={bon['rm_peak_n']}"
        + (" (no N beats a random reply)" if bon["rm_peak_n"] == ns[0] else "")
        + (f" and is lower at N={ns[-1]} beyond its band (over-optimisation shown)." if bon["rm_falls_after_peak"] else
           f" ({'no fall after the peak' if bon['rm_peak_n'] == ns[-1] else f'the fall at N={ns[-1]} is within the band'}: "
           "target MISSED, over-optimisation not shown at this size)."),
        f"- checker-chosen curve rises within its bands: {'yes' if bon['checker_monotone_within_bands'] else 'NO (MISSED)'}.",
        "", f"![best-of-N]({fig})", "",
        f"DPO on {dpo['pairs']} on-policy pairs (a correct vs a wrong reply of the SFT model; held-out implicit-"
        f"reward pair accuracy {dpo['implicit_val_acc']:.3f}), measured like GRPO:", "",
        measured_table(dpo, f"pass@{k}"), "",
        (f"- DPO - SFT: greedy {fmt_diff(d)}"
         + (f"; pass@1 at T = 1 {fmt_diff(dpo['diffs_pass@1']['dpo - sft'])}." if dpo.get("diffs_pass@1") else ".")
         if d else "- DPO skipped: no correct-vs-wrong pairs among the samples.")])


def make_probe(tokenizer, problems: list[dict], score, n: int, max_new_tokens: int, device: str):
    """A fixed held-out measurement for RLHF: n samples (same seeds every time) per problem ->
    mean RM score, mean hidden true score, accuracy, and KL(policy || ref) per response (k1, nats)."""
    stops = stop_ids(tokenizer)

    def probe(engine, policy, ref) -> dict:
        P, R, M, texts, probs = [], [], [], [], []
        for i, p in enumerate(problems):
            prompt = prompt_tokens(tokenizer, p["question"])
            for r, m in sample_group(engine, prompt, n, max_new_tokens, 1.0, None, 500 + i, stops):
                P.append(prompt), R.append(r), M.append(m), probs.append(p)
                texts.append(response_text(tokenizer, r, stops))
        ids, tgt = pack_sequences(P, R, M, tokenizer.bos_id)
        ids, tgt = ids.to(device), tgt.to(device)
        with torch.no_grad():
            kl = float((token_logprobs(policy, ids, tgt) - token_logprobs(ref, ids, tgt)).sum(1).mean())
        k = len(texts)
        return {"rm_score": sum(score(texts, probs)) / k, "kl": kl,
                "true_score": sum(true_score(t, p["answer"]) for t, p in zip(texts, probs)) / k,
                "acc": sum(exact_reward(t, p["answer"]) for t, p in zip(texts, probs)) / k}
    return probe


def divergence_point(evals: list[dict]) -> dict:
    """From the probe measurements: where the hidden true score peaks, and what the RM says then and at the end."""
    i = max(range(len(evals)), key=lambda j: evals[j]["true_score"])
    e0, ep, e1 = evals[0], evals[i], evals[-1]
    return {"peak_step": ep["step"], "peak_kl": ep["kl"], "true_at_peak": ep["true_score"], "rm_at_peak": ep["rm_score"],
            "true_final": e1["true_score"], "rm_final": e1["rm_score"], "kl_final": e1["kl"],
            "true_start": e0["true_score"], "rm_start": e0["rm_score"], "acc_start": e0["acc"], "acc_final": e1["acc"]}


def plot_overopt(history: list[dict], evals: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [e["step"] for e in evals]
    ax[0].plot(steps, [e["rm_score"] for e in evals], "o-", label="reward model score")
    ax[0].plot(steps, [e["true_score"] for e in evals], "s-", label="hidden true score")
    ax[0].plot([h["step"] for h in history], [h["reward"] for h in history], ".", alpha=0.3,
               label="RM score, training batch")
    ax[0].set_xlabel("RLHF step"), ax[0].set_title("held-out probe: RM vs true score"), ax[0].legend(fontsize=7)
    kl = [e["kl"] for e in evals]
    ax[1].plot(kl, [e["rm_score"] for e in evals], "o-", label="RM score")
    ax[1].plot(kl, [e["true_score"] for e in evals], "s-", label="true score")
    ax[1].set_xlabel("KL(policy || SFT) per response (nats)"), ax[1].set_title("against KL"), ax[1].legend(fontsize=7)
    return save_figure(fig, path)


def run_rlhf_stage(run_dir_: str | Path, budget_s: float = 300.0, device: str = "cpu", n_pairs: int = 1500,
                   n_test: int = 24, ns: tuple[int, ...] = (1, 2, 4, 8), max_new_tokens: int = 80,
                   rlhf_lr: float = 2e-4, kl_coef: float = 0.01, ei_problems: int = 48,
                   ei_steps: int = 20, probe_problems: int = 16, probe_every: int = 5) -> tuple[str, dict]:
    """RM + RLHF + over-optimization + DPO + search table; returns (markdown, metrics)."""
    rd = Path(run_dir_)
    t_start = time.perf_counter()
    ck = load_model(rd, device, stage="sft", what="sft")

    tok = ck.tokenizer
    train_p = world_problems(rd, "train")
    test_p = drop_overlong(tok, with_style(world_problems(rd, "test"), "tool"), ck.model.config.seq_len,
                           max_new_tokens)[:n_test]
    rng = random.Random(0)
    # 1. reward model
    pairs, val = split_pairs(synthetic_preferences(train_p, n_pairs, rng), 0.15, rng)
    rm, rm_m, rm_path = train_rm(make_config(RMConfig, run=str(rd), out=str(rd / "rm"), epochs=2, lr=3e-4,
                                             device=device, time_budget=0.25 * budget_s),
                                 model=trainable_copy(ck.model, device), tokenizer=tok, pairs=pairs, val_pairs=val)
    score = rm_reward_fn(rm, tok, device)
    # 2. RLHF against the RM, watching the hidden rule
    def observe(texts, probs):
        return {"true_score": sum(true_score(t, p["answer"]) for t, p in zip(texts, probs)) / len(texts),
                "acc": sum(exact_reward(t, p["answer"]) for t, p in zip(texts, probs)) / len(texts)}
    rcfg = make_config(RLConfig, run=str(rd), init=str(rd / "sft"), out=str(rd / "rlhf"), algo="reinforce",
                       reward="rm", steps=10_000, prompts_per_step=4, group_size=8, max_new_tokens=max_new_tokens,
                       lr=rlhf_lr, kl_coef=kl_coef, eval_problems=0, eval_k=0, eval_every=probe_every,
                       time_budget=0.4 * budget_s, device=device)
    policy = trainable_copy(ck.model, device)
    probe = make_probe(tok, test_p[:probe_problems], score, 4, max_new_tokens, device)
    rl_path, rl_m = train_rl(rcfg, policy=policy, tokenizer=tok, ref=trainable_copy(ck.model, device),
                             train_problems=with_style(train_p, "tool"),
                             eval_problems=[], rm_scorer=score, observe=observe, probe=probe)
    hist, pevals = rl_m["history"], rl_m["probes"]
    div = divergence_point(pevals) if pevals else {}
    fig = plot_overopt(hist, pevals, rd / "report" / "rlhf_overoptimization.png") if pevals else None
    # 3. DPO on the same pairs
    dpo_policy, dpo_m, _ = train_dpo(make_config(DPOConfig, run=str(rd), out=str(rd / "dpo"), epochs=1, beta=0.1,
                                                 lr=5e-5, device=device, time_budget=0.08 * budget_s),
                                     policy=trainable_copy(ck.model, device), tokenizer=tok, pairs=pairs, val_pairs=val)
    evals = {name: greedy_eval(m, tok, test_p, max_new_tokens, rm, device)
             for name, m in (("SFT", ck.model), ("RLHF (RM + KL)", policy), ("DPO", dpo_policy))}
    # 4. test-time search at equal budgets, from the SFT model
    samples = sample_texts(make_engine(ck.model, tok), tok, test_p, max(ns), max_new_tokens, 1.0, seed=7)
    rows = search_table(samples, test_p, ns, scorer=lambda t, p: score_texts(rm, tok, [[q["question"]] for q in p], t, device),
                        true_score=true_score)
    ei_policy = trainable_copy(ck.model, device)
    ei_before = greedy_eval(ei_policy, tok, test_p, max_new_tokens)["acc"]
    ei_train = drop_overlong(tok, with_style(train_p, "tool"), ck.model.config.seq_len, max_new_tokens)[:ei_problems]
    ei = expert_iteration(ei_policy, tok, ei_train, 4, max_new_tokens,
                          make_config(SFTConfig, max_steps=ei_steps, batch_size=16, lr=3e-4, schedule="constant",
                                      warmup=0, eval_every=0, device=device))
    ei_after = greedy_eval(ei_policy, tok, test_p, max_new_tokens)["acc"]
    seconds = time.perf_counter() - t_start
    metrics = {"rm_val_acc": rm_m["val_acc"], "rm_val_acc_vs_rule": rm_m.get("val_acc_vs_rule"),
               "annotator_agreement": rm_m.get("annotator_agreement"), "rlhf_steps": rl_m["steps"],
               "overopt": div, "dpo_val_acc": dpo_m["val_acc"], "policies": evals, "search": rows,
               "expert_iteration": {"before": ei_before, "after": ei_after, **ei}, "seconds": seconds}
    md = ["## RLHF (reward model, over-optimization, DPO, test-time search)", "",
          f"Synthetic preferences: {len(pairs)} train / {len(val)} held-out pairs over word-problem answers; hidden rule "
          "= 2 x correct + polite (rude -1) - 0.05 x words; simulated annotators follow Bradley-Terry on the true gap "
          f"(agree with the rule on {100 * (rm_m.get('annotator_agreement') or 0):.0f}% of held-out pairs).", "",
          f"Reward model: held-out pair accuracy {rm_m['val_acc']:.3f} vs the labels, "
          f"{rm_m.get('val_acc_vs_rule') or float('nan'):.3f} vs the hidden rule.", "",
          md_table(["policy (greedy, held-out)", "accuracy", "true score", "RM score", "words"],
                   [[k, v["acc"], v["true_score"], v.get("rm_score", float("nan")), v["words"]] for k, v in evals.items()]),
          ""]
    if div:
        md += [f"Over-optimization ({rl_m['steps']} RLHF steps, lr {rlhf_lr}, KL coef {kl_coef}; probe = "
               f"{min(probe_problems, len(test_p))} held-out problems x 4 samples every {probe_every} steps): the hidden "
               f"true score peaks at step {div['peak_step']} (KL {div['peak_kl']:.2f} nats/response, true "
               f"{div['true_at_peak']:.2f}, RM {div['rm_at_peak']:.2f}); at the end (KL {div['kl_final']:.2f}) true "
               f"{div['true_final']:.2f}, RM {div['rm_final']:.2f}, accuracy {div['acc_start']:.2f} -> "
               f"{div['acc_final']:.2f} (start: true {div['true_start']:.2f}, RM {div['rm_start']:.2f}).", "",
               f"![over-optimization]({fig.relative_to(rd).as_posix()})", ""]
    md += [f"DPO: held-out implicit-reward pair accuracy {dpo_m['val_acc']:.3f}.", "",
           f"Test-time search from the SFT model, {len(test_p)} held-out problems, same samples for every selector:", "",
           md_table(["N", "one sample", "majority vote", "best-of-N (checker)", "best-of-N (RM)",
                     "true score of RM pick", "KL bound (nats)"],
                    [[r["N"], r["sample"], r["majority"], r["bon_oracle"], r.get("bon_rm", float("nan")),
                      r.get("bon_rm_true_score", float("nan")), bon_kl_bound(r["N"])] for r in rows]), "",
           f"Expert iteration (1 round: 4 samples x {len(ei_train)} train problems, SFT on the {ei['rounds'][0]['kept']} correct "
           f"ones): greedy accuracy {ei_before:.3f} -> {ei_after:.3f}."]
    print0(f"rlhf stage: {seconds:.0f}s")
    return "\n".join(md) + "\n", metrics
