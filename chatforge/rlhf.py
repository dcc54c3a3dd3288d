"""The ``--full`` RLHF stage: reward model, RLHF against it, over-optimization, DPO, test-time search.

Everything runs on the synthetic preferences of ``chatforge.reward`` (a hidden rule: correct AND
polite AND concise, judged by noisy Bradley-Terry annotators), so each learned quantity can be
compared with the truth:

1. reward model on the pairs -> held-out pair accuracy (vs the noisy labels and vs the rule);
2. RLHF (``rl.train_rl(algo="ppo")``: RM reward, KL-in-reward, group baseline) from the SFT model,
   logging per step the RM score, the hidden true score and the KL to the SFT model; the plot of
   both scores against KL shows where they part (Gao et al. 2022, "Scaling Laws for Reward Model
   Overoptimization");
3. DPO on the same pairs from the same SFT model;
4. test-time search on the held-out problems: majority vote / best-of-N (checker) / best-of-N (RM)
   at equal budgets N = 1, 2, 4, 8, with the best-of-N KL bound; and one round of expert iteration.
"""
from __future__ import annotations

import copy
import random
import time
from pathlib import Path

from chatforge.common import print0
from chatforge.reward import (RMConfig, rm_reward_fn, score_texts, split_pairs, synthetic_preferences, train_rm,
                              true_score)
from chatforge.rl import (RLConfig, exact_reward, fitting, load_ckpt, make_engine, styled, train_rl,
                          world_problems)


def greedy_eval(policy, tokenizer, problems: list[dict], max_new_tokens: int, rm=None, device: str = "cpu") -> dict:
    """Greedy answers -> accuracy, mean hidden true score, mean RM score, mean length (words)."""
    from chatforge.search import sample_answers
    texts = [s[0] for s in sample_answers(make_engine(policy, tokenizer), tokenizer, problems, 1, max_new_tokens, 0.0)]
    out = {"acc": sum(exact_reward(t, p["answer"]) for t, p in zip(texts, problems)) / len(problems),
           "true_score": sum(true_score(t, p["answer"]) for t, p in zip(texts, problems)) / len(problems),
           "words": sum(len(t.split()) for t in texts) / len(problems)}
    if rm is not None:
        out["rm_score"] = sum(rm_reward_fn(rm, tokenizer, device)(texts, problems)) / len(problems)
    return out


def divergence_point(history: list[dict], w: int = 5) -> dict:
    """Where the hidden true score (moving average) peaks while the RM score keeps rising."""
    ma = lambda key: [sum(h[key] for h in history[max(0, i - w + 1):i + 1]) / len(history[max(0, i - w + 1):i + 1])
                      for i in range(len(history))]
    t, r = ma("true_score"), ma("reward")
    i = max(range(len(t)), key=lambda j: t[j])
    return {"peak_step": history[i]["step"], "peak_kl": history[i].get("seq_kl", 0.0), "true_at_peak": t[i],
            "true_final": t[-1], "rm_at_peak": r[i], "rm_final": r[-1], "rm_start": r[0], "true_start": t[0]}


def plot_overopt(history: list[dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from chatforge.common import atomic_path
    kl = [h.get("seq_kl", 0.0) for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot([h["step"] for h in history], [h["reward"] for h in history], ".-", label="reward model score")
    ax[0].plot([h["step"] for h in history], [h["true_score"] for h in history], ".-", label="hidden true score")
    ax[0].set_xlabel("RLHF step"), ax[0].set_title("RM score vs true score"), ax[0].legend(fontsize=7)
    ax[1].scatter(kl, [h["reward"] for h in history], s=10, label="RM score")
    ax[1].scatter(kl, [h["true_score"] for h in history], s=10, label="true score")
    ax[1].set_xlabel("KL(policy || SFT) per response (nats)"), ax[1].set_title("against KL"), ax[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def run_rlhf_stage(run_dir_: str | Path, budget_s: float = 300.0, device: str = "cpu", n_pairs: int = 1500,
                   n_test: int = 24, ns: tuple[int, ...] = (1, 2, 4, 8), max_new_tokens: int = 48,
                   rlhf_lr: float = 2e-4, kl_coef: float = 0.01, ei_problems: int = 48,
                   ei_steps: int = 20) -> tuple[str, dict]:
    """RM + RLHF + over-optimization + DPO + search table; returns (markdown, metrics)."""
    from chatforge.dpo import DPOConfig, train_dpo
    from chatforge.report import md_table
    from chatforge.search import bon_kl_bound, expert_iteration, sample_answers, search_table
    from chatforge.sft import SFTConfig
    rd = Path(run_dir_)
    t_start = time.perf_counter()
    ck = load_ckpt(rd / "sft", device, "sft")
    def fresh():  # a trainable copy of the SFT model
        m = copy.deepcopy(ck.model).to(device)
        for p in m.parameters():
            p.requires_grad_(True)
        return m
    tok = ck.tokenizer
    train_p = world_problems(rd, "train")
    test_p = fitting(tok, styled(world_problems(rd, "test"), "tool"), ck.model.config.seq_len, max_new_tokens)[:n_test]
    rng = random.Random(0)
    # 1. reward model
    pairs, val = split_pairs(synthetic_preferences(train_p, n_pairs, rng), 0.15, rng)
    rm, rm_m, rm_path = train_rm(RMConfig(run=str(rd), out=str(rd / "rm"), epochs=2, lr=3e-4, device=device,
                                          budget_s=0.2 * budget_s), model=fresh(), tokenizer=tok, pairs=pairs,
                                 val_pairs=val)
    score = rm_reward_fn(rm, tok, device)
    # 2. RLHF against the RM, watching the hidden rule
    def observe(texts, probs):
        return {"true_score": sum(true_score(t, p["answer"]) for t, p in zip(texts, probs)) / len(texts),
                "acc": sum(exact_reward(t, p["answer"]) for t, p in zip(texts, probs)) / len(texts)}
    rcfg = RLConfig(run=str(rd), source=str(rd / "sft"), out=str(rd / "rlhf"), algo="ppo", reward="rm", steps=10_000,
                    prompts_per_step=4, group_size=8, max_new_tokens=max_new_tokens, lr=rlhf_lr, kl_coef=kl_coef,
                    eval_problems=0, eval_k=0, budget_s=0.35 * budget_s, device=device)
    policy = fresh()
    rl_path, rl_m = train_rl(rcfg, policy=policy, tokenizer=tok, ref=fresh(),
                             train_problems=styled(train_p, "tool"), eval_problems=[], rm_scorer=score, observe=observe)
    hist = rl_m["history"]
    div = divergence_point(hist) if hist else {}
    fig = plot_overopt(hist, rd / "report" / "rlhf_overoptimization.png") if hist else None
    # 3. DPO on the same pairs
    dpo_policy, dpo_m, _ = train_dpo(DPOConfig(run=str(rd), out=str(rd / "dpo"), epochs=1, beta=0.1, lr=5e-5,
                                               device=device, budget_s=0.12 * budget_s),
                                     policy=fresh(), tokenizer=tok, pairs=pairs, val_pairs=val)
    evals = {name: greedy_eval(m, tok, test_p, max_new_tokens, rm, device)
             for name, m in (("SFT", ck.model), ("RLHF (RM + KL)", policy), ("DPO", dpo_policy))}
    # 4. test-time search at equal budgets, from the SFT model
    samples = sample_answers(make_engine(ck.model, tok), tok, test_p, max(ns), max_new_tokens, 1.0, seed=7)
    rows = search_table(samples, test_p, ns, scorer=lambda t, p: score_texts(rm, tok, [[q["question"]] for q in p], t, device),
                        true_score=true_score)
    ei_policy = fresh()
    ei_before = greedy_eval(ei_policy, tok, test_p, max_new_tokens)["acc"]
    ei_train = fitting(tok, styled(train_p, "tool"), ck.model.config.seq_len, max_new_tokens)[:ei_problems]
    ei = expert_iteration(ei_policy, tok, ei_train, 4, max_new_tokens,
                          SFTConfig(max_steps=ei_steps, batch_size=16, lr=3e-4, schedule="constant", warmup=0,
                                    eval_every=0, device=device))
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
        md += [f"Over-optimization ({rl_m['steps']} RLHF steps, KL coef {kl_coef}): the hidden true score (moving "
               f"average) peaks at step {div['peak_step']} (KL {div['peak_kl']:.2f} nats/response, true "
               f"{div['true_at_peak']:.2f}, RM {div['rm_at_peak']:.2f}); at the end true {div['true_final']:.2f}, "
               f"RM {div['rm_final']:.2f} (start: true {div['true_start']:.2f}, RM {div['rm_start']:.2f}).", "",
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
