"""Reinforcement learning on verifiable rewards: GRPO (and RLHF against a reward model).

A short tutorial
----------------
After SFT the model can *format* an answer; RL teaches it to get the answer *right* by trying.
For each prompt q we sample a group of G responses o_1..o_G from the current policy (the engine does
this in one batched, KV-cached call), score each with a reward r_i (here: a rule -- is the final
number correct, is the format right), and push up the log-probability of the better-than-average ones.

GRPO (Shao et al. 2024, "DeepSeekMath", section 4) is PPO (Schulman et al. 2017) without a value
network: the baseline is the group itself,

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)          (same A_i for every token of o_i)

and the per-token objective is PPO's clipped surrogate plus a KL penalty towards the frozen reference
(the SFT model), estimated per token with Schulman's (2020, "Approximating KL divergence") k3:

    ratio_t = pi(o_t | .) / pi_old(o_t | .)
    J_t     = min(ratio_t * A_i, clip(ratio_t, 1 - eps, 1 + eps) * A_i) - beta * k3_t
    k3_t    = exp(ref_t - logp_t) - (ref_t - logp_t) - 1   >= 0, unbiased for KL(pi || ref), 0 iff equal

GRPO averages J_t over the tokens of each response, then over responses. Dr. GRPO (Liu et al. 2025,
"Understanding R1-Zero-Like Training") points out two biases: dividing by |o_i| favours long wrong
answers (their per-token penalty is diluted), and dividing by std(r) over-weights nearly-solved or
nearly-hopeless groups. Their fix (``--loss-norm dr_grpo``): advantages r_i - mean(r) and a constant
normalizer (number of responses x max_new_tokens). ``--loss-norm token`` is the token-level mean
(DAPO, Yu et al. 2025) for comparison.

A group where every response gets the same reward has A = 0 and teaches nothing; the fraction of such
groups is logged (it is the first thing to look at when RL "does nothing"). So are pass@1 and pass@k
on held-out problems (the unbiased estimator of Chen et al. 2021), the mean response length, and the
KL to the reference. ``--reward random`` is the control: a coin-flip reward must not improve accuracy.

RLHF (``--algo ppo``): the reward is a learned reward model (``chatforge rm``) and the KL penalty is
folded into the reward per response as in Ziegler et al. 2019 / InstructGPT (r = RM - beta * KL(seq));
the baseline is the group mean (as in GRPO / RLOO) rather than a learned critic. Since the reward model
is only a proxy of what annotators want, optimizing it too hard lowers the true score ("reward model
over-optimization", Gao et al. 2022): ``run_rlhf_stage`` measures exactly that on synthetic preferences
whose hidden true score we know.
"""
from __future__ import annotations

import copy
import functools
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from chatforge.common import (CfError, Timer, add_config_args, atomic_write_json, autocast_ctx, config_from_args,
                              get_device, make_parser, print0, print_config, run_dir, seed_all, train_dtype)

# ============================================================================ pure GRPO math

def group_advantages(rewards: torch.Tensor, scale_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """(P, G) rewards of P groups of G responses -> (P, G) advantages, normalized within each group.

    GRPO: (r - mean) / (std + eps); Dr. GRPO: r - mean (``scale_std=False``). Population std, so a
    group of identical rewards gives exactly 0.
    """
    mean = rewards.mean(dim=1, keepdim=True)
    adv = rewards - mean
    if scale_std:
        adv = adv / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps)
    return adv


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref) from log-probs of tokens sampled from pi (Schulman 2020).

    exp(x) - x - 1 with x = ref - logp: >= 0 everywhere, 0 iff the log-probs agree.
    """
    x = ref_logp - logp
    return torch.exp(x) - x - 1.0


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                      clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token (to maximize) and the ratio. Shapes broadcast: (B, T)."""
    ratio = torch.exp(logp - old_logp)
    obj = torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
    return obj, ratio


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, adv: torch.Tensor,
              mask: torch.Tensor, clip_eps: float = 0.2, kl_coef: float = 0.0, loss_norm: str = "grpo",
              max_len: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss (to minimize) over a batch of B responses padded to T tokens.

    logp/old_logp/ref_logp: (B, T) log-probs of the sampled tokens; adv: (B,) per-response advantage;
    mask: (B, T) 1 on tokens the policy sampled. loss_norm: "grpo" (mean per response, then over
    responses), "dr_grpo" (sum / (B * max_len)), "token" (mean over all tokens in the batch).
    """
    mask = mask.to(logp.dtype)
    obj, ratio = clipped_surrogate(logp, old_logp, adv[:, None], clip_eps)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    per_tok = -(obj - kl_coef * kl) * mask  # (B, T)
    if loss_norm == "grpo":
        loss = (per_tok.sum(1) / mask.sum(1).clamp(min=1)).mean()
    elif loss_norm == "dr_grpo":
        loss = per_tok.sum() / (logp.shape[0] * (max_len or logp.shape[1]))
    elif loss_norm == "token":
        loss = per_tok.sum() / mask.sum().clamp(min=1)
    else:
        raise CfError(f"loss_norm: expected grpo|dr_grpo|token, got {loss_norm!r}")
    n = mask.sum().clamp(min=1)
    kl, ratio = kl.detach(), ratio.detach()
    clipped = ((ratio - 1.0).abs() > clip_eps).to(logp.dtype)
    stats = {"kl": float((kl * mask).sum() / n), "clip_frac": float((clipped * mask).sum() / n),
             "ratio": float((ratio * mask).sum() / n)}
    return loss, stats


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1, stable form)."""
    if k > n:
        raise ValueError(f"pass@k: k={k} > n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


# ============================================================================ tasks and rule rewards

_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"


def normalize_number(s: str | None) -> str | None:
    """'1,234.0' / '$18' / '18.' -> '1234' / '18' / '18'; None if not a number."""
    if s is None:
        return None
    s = s.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        x = float(s)
    except ValueError:
        return None
    if math.isfinite(x) and x == int(x):
        return str(int(x))
    return repr(x)


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a response: after '####', else after 'answer is', else the last number."""
    for pat in (rf"####\s*({_NUM})", rf"answer\s*(?:is|:)\s*({_NUM})"):
        m = re.findall(pat, text, flags=re.IGNORECASE)
        if m:
            return normalize_number(m[-1])
    m = re.findall(_NUM, text)
    return normalize_number(m[-1]) if m else None


def format_ok(text: str) -> bool:
    """The format rule: the response states its answer explicitly ('#### N' or 'answer is N')."""
    return re.search(rf"(####\s*{_NUM}|answer\s*(?:is|:)\s*{_NUM})", text, flags=re.IGNORECASE) is not None


def exact_reward(text: str, gold: str) -> float:
    return 1.0 if extract_answer(text) == normalize_number(gold) else 0.0


def rule_reward(text: str, gold: str, format_weight: float = 0.1) -> float:
    """1 for a correct final answer, + format_weight for stating it in the expected format."""
    return exact_reward(text, gold) + format_weight * float(format_ok(text))


def load_gsm8k(path: str | Path, limit: int | None = None) -> list[dict]:
    """GSM8K JSONL -> [{"question", "answer"}] (parsing shared with SFT: convo.gsm8k_items)."""
    from chatforge.convo import gsm8k_items
    return [{"question": q, "answer": normalize_number(a) or a, "solution": sol}
            for q, sol, a in gsm8k_items(path, limit)]


@functools.lru_cache(maxsize=2)
def _small_world(seed: int):
    from chatforge.world import WorldConfig, build_world
    return build_world(WorldConfig(seed=seed, n_people=20, n_cities=8, n_countries=3, n_universities=4,
                                   n_employers=4, n_filler_per_entity=1, n_problems=3000, n_spelling=10))


def world_problems(run: str | Path | None = None, split: str = "train", seed: int = 1337,
                   n: int | None = None, kinds: tuple[str, ...] = ("word",)) -> list[dict]:
    """The synthetic world's problems of ``kinds`` in ``split`` as [{"question", "answer"}].

    Read from ``runs/<run>/world/world.json`` when it exists (the same split SFT saw), else a small
    world is generated from ``seed`` (problems only matter here, so few people).
    """
    from chatforge.world import load_world
    wj = run_dir(run) / "world" / "world.json" if run else None
    if wj is not None and wj.exists():
        w = load_world(wj)
    else:
        w = _small_world(seed)
    out = [{"question": p["question"], "answer": str(p["answer"]), "solution": p.get("solution", ""),
            "id": p.get("id", "")} for p in w.problems if p.get("split") == split and p.get("kind") in kinds]
    return out[:n] if n else out


def load_task(task: str, split: str, seed: int = 1337, limit: int | None = None,
              run: str | Path | None = None) -> list[dict]:
    """Problems {"question", "answer"} of a task: world | gsm8k | a GSM8K-format JSONL file."""
    if task == "world":
        return world_problems(run, split, seed, limit)
    if task == "gsm8k":
        base = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
        return load_gsm8k(base / ("train.jsonl" if split == "train" else "test.jsonl"), limit)
    p = Path(task)
    if p.suffix == ".jsonl":
        return load_gsm8k(p, limit)
    raise CfError(f"task: expected world|gsm8k|<file.jsonl>, got {task!r}")


# ============================================================================ rollouts and log-probs

def prompt_tokens(tokenizer, question: str) -> list[int]:
    """A user question rendered for the assistant to answer (ends with <|assistant_start|>)."""
    return tokenizer.render_for_completion({"messages": [{"role": "user", "content": question}]})


def stop_ids(tokenizer) -> list[int]:
    return [tokenizer.special("<|assistant_end|>"), tokenizer.bos_id]


def sample_group(engine, prompt: list[int], n: int, max_new_tokens: int, temperature: float,
                 top_k: int | None, seed: int, stops: list[int]) -> list[tuple[list[int], list[int]]]:
    """n responses to one prompt in one batched engine call -> [(response tokens, sample mask)].

    The response keeps its final <|assistant_end|> (the policy chose to stop: that choice is trained).
    """
    seqs, masks = engine.generate_batch(prompt, num_samples=n, max_new_tokens=max_new_tokens,
                                        temperature=temperature, top_k=top_k or None, seed=seed,
                                        stop_tokens=stops)
    return [(list(s), list(m)) for s, m in zip(seqs, masks)]  # new tokens only (engine contract)


def response_text(tokenizer, tokens: Sequence[int], stops: Sequence[int]) -> str:
    """Decode a response up to (not including) its stop token."""
    cut = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
    return tokenizer.decode(list(tokens[:cut]))


def pack_sequences(prompts: Sequence[list[int]], responses: Sequence[list[int]],
                   masks: Sequence[list[int]] | None = None, pad_id: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (inputs (B, T), targets (B, T)) for prompt+response pairs.

    targets are -1 except where the next token is a response token the policy sampled (mask 1);
    forced tokens (tool outputs injected by the engine) and the prompt are not trained.
    """
    rows = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        m = masks[i] if masks is not None else [1] * len(r)
        full = list(p) + list(r)
        tgt = [-1] * (len(p) - 1) + [t if k else -1 for t, k in zip(r, m)]
        rows.append((full[:-1], tgt))
    T = max(len(x) for x, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    tgts = torch.full((len(rows), T), -1, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        tgts[i, :len(y)] = torch.tensor(y, dtype=torch.long)
    return ids, tgts


def token_logprobs(model, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T) log pi(target_t | ids_<=t), 0 where target is -1 (uses GPT's per-token loss)."""
    nll = model(ids, targets, reduction="none")  # (B, T)
    return -nll * (targets != -1).to(nll.dtype)


def sequence_logprobs(model, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) sum of the target tokens' log-probs (DPO, best-of-N KL)."""
    return token_logprobs(model, ids, targets).sum(dim=1)


# ============================================================================ checkpoints

def check_compatible(a, b, what_a: str, what_b: str, same_shape: bool = True) -> None:
    """Policy vs reference (or reward model): same tokenizer, and (optionally) the same architecture."""
    ta, tb = a.tokenizer, b.tokenizer
    if ta.n_vocab != tb.n_vocab or ta.encode("The answer is 42.\n") != tb.encode("The answer is 42.\n"):
        raise CfError(f"{what_b}: tokenizer differs from {what_a}'s (n_vocab {tb.n_vocab} vs {ta.n_vocab}); "
                      "expected checkpoints of the same run")
    if same_shape:
        ca, cb = asdict(a.model.config), asdict(b.model.config)
        if ca != cb:
            diff = {k: (ca.get(k), cb.get(k)) for k in set(ca) | set(cb) if ca.get(k) != cb.get(k)}
            raise CfError(f"{what_b}: model shape differs from {what_a}'s {diff}")


def load_ckpt(path: str | Path, device: str, what: str):
    from chatforge.checkpoint import load_checkpoint
    p = Path(path)
    if not p.exists():
        raise CfError(f"{p}: {what} checkpoint not found")
    return load_checkpoint(p, device=device)


# ============================================================================ config

@dataclass
class RLConfig:
    run: str = field(default="default", metadata={"help": "run name (runs/<run>) or path"})
    source: str = field(default="", metadata={"help": "policy checkpoint (default runs/<run>/sft)"})
    ref: str = field(default="", metadata={"help": "reference checkpoint for the KL (default: source)"})
    out: str = field(default="", metadata={"help": "output stage dir (default runs/<run>/rl, ppo: rlhf)"})
    algo: str = field(default="grpo", metadata={"help": "grpo: rule reward; ppo: RLHF (reward model, KL in "
                                                          "reward)", "choices": ["grpo", "ppo"]})
    task: str = field(default="world", metadata={"help": "world | gsm8k | path/to/problems.jsonl"})
    style: str = field(default="tool", metadata={"help": "world prompts' answer style as in SFT (convo.MATH_STYLES): "
                                                         "tool (calculator) | worked | direct | none"})
    reward: str = field(default="rule", metadata={"help": "rule (exact+format) | random (control) | rm",
                                                  "choices": ["rule", "random", "rm"]})
    rm: str = field(default="", metadata={"help": "reward model checkpoint (default runs/<run>/rm)"})
    format_weight: float = field(default=0.1, metadata={"help": "rule reward bonus for the answer format"})
    steps: int = field(default=40, metadata={"help": "RL steps"})
    prompts_per_step: int = field(default=8, metadata={"help": "groups (prompts) per step"})
    group_size: int = field(default=8, metadata={"help": "G: responses sampled per prompt"})
    max_new_tokens: int = field(default=64, metadata={"help": "response length limit"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of rollouts"})
    top_k: int = field(default=0, metadata={"help": "top-k of rollouts (0 = off)"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw | muon (optim.build_optimizer)"})
    lr: float = field(default=2e-5, metadata={"help": "learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip (0 = off)"})
    clip_eps: float = field(default=0.2, metadata={"help": "PPO ratio clip epsilon"})
    kl_coef: float = field(default=0.02, metadata={"help": "beta: weight of the KL to the reference"})
    loss_norm: str = field(default="grpo", metadata={"help": "grpo | dr_grpo | token",
                                                     "choices": ["grpo", "dr_grpo", "token"]})
    ppo_epochs: int = field(default=1, metadata={"help": "optimization passes over each batch of rollouts"})
    eval_every: int = field(default=10, metadata={"help": "held-out evaluation every N steps (0 = ends only)"})
    eval_problems: int = field(default=32, metadata={"help": "held-out problems for pass@k"})
    eval_k: int = field(default=4, metadata={"help": "k of pass@k (samples per held-out problem)"})
    train_problems: int = field(default=0, metadata={"help": "limit of training problems (0 = all)"})
    budget_s: float = field(default=0.0, metadata={"help": "stop after this many seconds (0 = off)"})
    budget_covers_eval: bool = field(default=False, metadata={"help": "the budget also pays for the held-out "
                                                                      "evaluations before and after (speedrun)"})
    seed: int = field(default=1337, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"help": "cpu | cuda | mps | auto"})
    dtype: str = field(default="auto", metadata={"help": "training autocast: auto (bf16 on CUDA and on CPUs with "
                                                         "native bf16; rollouts stay fp32) | float32 | bfloat16",
                                                 "choices": ["auto", "float32", "bfloat16"]})


def make_reward_fn(cfg: RLConfig, rng: random.Random, rm_scorer: Callable | None = None
                   ) -> Callable[[list[str], list[dict]], list[float]]:
    """Batch reward: (response texts, their problems) -> rewards. 'random' is the control run."""
    if cfg.reward == "rule":
        return lambda texts, probs: [rule_reward(t, p["answer"], cfg.format_weight) for t, p in zip(texts, probs)]
    if cfg.reward == "random":
        return lambda texts, probs: [float(rng.random() < 0.5) for _ in texts]
    if cfg.reward == "rm":
        if rm_scorer is None:
            raise CfError("reward: 'rm' needs a reward model (--rm)")
        return rm_scorer
    raise CfError(f"reward: expected rule|random|rm, got {cfg.reward!r}")


def safe_rewards(fn: Callable, texts: list[str], probs: list[dict], name: str) -> list[float]:
    """Call a reward function; a crash or a non-finite value becomes a CfError naming the sample."""
    try:
        rs = [float(r) for r in fn(texts, probs)]
    except CfError:
        raise
    except Exception as e:
        raise CfError(f"reward {name!r} raised {type(e).__name__}: {e} (on a batch starting with "
                      f"question {probs[0].get('question', '')[:60]!r})") from None
    if len(rs) != len(texts):
        raise CfError(f"reward {name!r}: returned {len(rs)} values for {len(texts)} responses")
    for r, t, p in zip(rs, texts, probs):
        if not math.isfinite(r):
            raise CfError(f"reward {name!r}: non-finite reward {r} for response {t[:60]!r} "
                          f"to {p.get('question', '')[:60]!r}")
    return rs


# ============================================================================ evaluation

@torch.no_grad()
def evaluate_problems(engine, tokenizer, problems: list[dict], k: int, max_new_tokens: int,
                      temperature: float = 1.0, seed: int = 0) -> dict[str, float]:
    """pass@1 and pass@k (unbiased, n = k samples each), greedy accuracy, mean response length."""
    stops = stop_ids(tokenizer)
    p1 = pk = greedy = length = 0.0
    for i, prob in enumerate(problems):
        prompt = prompt_tokens(tokenizer, prob["question"])
        outs = sample_group(engine, prompt, k, max_new_tokens, temperature, None, seed + i, stops)
        c = sum(exact_reward(response_text(tokenizer, r, stops), prob["answer"]) for r, _ in outs)
        p1 += pass_at_k(k, int(c), 1)
        pk += pass_at_k(k, int(c), k)
        length += sum(len(r) for r, _ in outs) / k
        (g, _), = sample_group(engine, prompt, 1, max_new_tokens, 0.0, None, seed + i, stops)
        greedy += exact_reward(response_text(tokenizer, g, stops), prob["answer"])
    n = max(1, len(problems))
    return {"pass@1": p1 / n, f"pass@{k}": pk / n, "greedy_acc": greedy / n, "greedy_correct": int(greedy),
            "n_problems": len(problems), "eval_len": length / n}


# ============================================================================ one RL step

def rl_update(policy, ref, optimizer, prompts: list[list[int]], responses: list[list[int]],
              masks: list[list[int]], adv: torch.Tensor, cfg: RLConfig, device: str,
              pad_id: int = 0) -> dict[str, float]:
    """The policy-gradient half of a step: given rollouts and their advantages (B,), take
    ``cfg.ppo_epochs`` optimizer steps on the GRPO loss. Returns the loss statistics."""
    ids, tgt = pack_sequences(prompts, responses, masks, pad_id)
    ids, tgt, adv = ids.to(device), tgt.to(device), adv.to(device).float()
    mask = (tgt != -1)
    # policy, old and reference log-probs all under the same autocast, so the ratio and KL compare like
    # with like (the rollouts' own fp32 sampling probabilities are not reused)
    with autocast_ctx(device, train_dtype(device, cfg.dtype)):
        return _update(policy, ref, optimizer, ids, tgt, mask, adv, cfg)


def _update(policy, ref, optimizer, ids: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor,
            cfg: RLConfig) -> dict[str, float]:
    with torch.no_grad():
        ref_logp = token_logprobs(ref, ids, tgt) if ref is not None and cfg.kl_coef > 0 else None
        old_logp = token_logprobs(policy, ids, tgt) if cfg.ppo_epochs > 1 else None
    policy.train()
    stats: dict[str, float] = {}
    for _ in range(max(1, cfg.ppo_epochs)):
        logp = token_logprobs(policy, ids, tgt)
        old = old_logp if old_logp is not None else logp.detach()  # one pass: ratio == 1, grad = A * dlogp
        loss, stats = grpo_loss(logp, old, ref_logp, adv, mask, cfg.clip_eps, cfg.kl_coef, cfg.loss_norm,
                                cfg.max_new_tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        stats["loss"] = float(loss.detach())
    policy.eval()
    if ref_logp is None and ref is not None:  # still report the KL to the reference
        with torch.no_grad():
            stats["kl"] = float((k3_kl(token_logprobs(policy, ids, tgt), token_logprobs(ref, ids, tgt))
                                 * mask).sum() / mask.sum().clamp(min=1))
    return stats


def rollout_step(engine, tokenizer, problems: list[dict], cfg: RLConfig, seed: int
                 ) -> tuple[list[list[int]], list[list[int]], list[list[int]], list[str], list[dict]]:
    """Sample G responses for each problem -> (prompts, responses, masks, texts, problems), flat,
    group-major (responses of problem j are rows j*G .. j*G+G-1)."""
    stops = stop_ids(tokenizer)
    P, R, M, X, Q = [], [], [], [], []
    for j, prob in enumerate(problems):
        prompt = prompt_tokens(tokenizer, prob["question"])
        for r, m in sample_group(engine, prompt, cfg.group_size, cfg.max_new_tokens, cfg.temperature,
                                 cfg.top_k, seed * 1000 + j, stops):
            P.append(prompt)
            R.append(r)
            M.append(m)
            X.append(response_text(tokenizer, r, stops))
            Q.append(prob)
    return P, R, M, X, Q


def grpo_advantages_for(rewards: list[float], G: int, loss_norm: str) -> tuple[torch.Tensor, float]:
    """Flat rewards -> flat advantages and the fraction of groups with zero reward variance."""
    r = torch.tensor(rewards, dtype=torch.float32).view(-1, G)
    adv = group_advantages(r, scale_std=(loss_norm != "dr_grpo"))
    zero_var = float((r.std(dim=1, unbiased=False) < 1e-8).float().mean())
    return adv.view(-1), zero_var


# ============================================================================ the training loop

def make_engine(model, tokenizer, use_tools: bool = True):
    """The sampling engine, with the calculator/python tools (what SFT's tool traces expect)."""
    from chatforge.engine import Engine
    from chatforge.tools import ToolBox
    return Engine(model, tokenizer, tools=ToolBox(enabled=("calculator", "python")) if use_tools else None)


def fitting(tokenizer, problems: list[dict], seq_len: int, max_new_tokens: int, what: str = "problems") -> list[dict]:
    """Drop problems whose prompt + response budget would not fit the model's context (says how many)."""
    keep = [p for p in problems if len(prompt_tokens(tokenizer, p["question"])) + max_new_tokens <= seq_len]
    if len(keep) < len(problems):
        print0(f"rl: skipped {len(problems) - len(keep)} of {len(problems)} {what} longer than the context "
               f"({seq_len} tokens incl. {max_new_tokens} new)")
    return keep


def styled(problems: list[dict], style: str) -> list[dict]:
    """Append SFT's answer-style instruction (" Use the calculator.") to each question."""
    if style in ("", "none"):
        return problems
    from chatforge.convo import MATH_STYLES
    if style not in MATH_STYLES:
        raise CfError(f"style: expected one of {sorted(MATH_STYLES)} or none, got {style!r}")
    return [{**p, "question": p["question"] + MATH_STYLES[style]} for p in problems]


def _resolve_paths(cfg: RLConfig) -> tuple[Path, Path, Path]:
    rd = run_dir(cfg.run)
    source = Path(cfg.source) if cfg.source else rd / "sft"
    ref = Path(cfg.ref) if cfg.ref else source
    out = Path(cfg.out) if cfg.out else rd / ("rlhf" if cfg.algo == "ppo" else "rl")
    if out.resolve() == source.resolve() or out.resolve() in source.resolve().parents:
        raise CfError(f"out: {out} would write into the source checkpoint {source}; choose another --out")
    return source, ref, out


def train_rl(cfg: RLConfig, policy=None, tokenizer=None, ref=None, train_problems: list[dict] | None = None,
             eval_problems: list[dict] | None = None, rm_scorer: Callable | None = None,
             observe: Callable[[list[str], list[dict]], dict] | None = None,
             probe: Callable[[object, object, object], dict] | None = None, save: bool = True,
             before: dict | None = None) -> tuple[Path | None, dict]:
    """Run GRPO (or RLHF with ``algo='ppo'``) and return (checkpoint path or None, metrics).

    Everything may be passed in-process (tests, speedrun); otherwise checkpoints are read from
    ``cfg.source``/``cfg.ref`` and problems from ``cfg.task``. ``observe(texts, problems) -> dict`` adds
    per-step metrics (the over-optimization experiment logs the hidden true score with it);
    ``probe(engine, policy, ref) -> dict`` runs at every evaluation (fixed held-out measurements).
    Nothing is written unless the whole run succeeds.
    """
    for name in ("steps", "prompts_per_step", "group_size", "max_new_tokens"):
        if getattr(cfg, name) < 1:
            raise CfError(f"rl config: {name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.group_size < 2:
        raise CfError("rl config: group_size must be >= 2 (the baseline is the group mean)")
    from chatforge.optim import build_optimizer
    seed_all(cfg.seed)
    device = get_device(cfg.device)
    source, ref_path, out = _resolve_paths(cfg)
    if policy is None:
        ck = load_ckpt(source, device, "policy")
        policy, tokenizer = ck.model, ck.tokenizer
        rck = ck if ref_path.resolve() == source.resolve() else load_ckpt(ref_path, device, "reference")
        if rck is not ck:
            check_compatible(ck, rck, str(ck.path), str(rck.path))
        ref = rck.model if rck is not ck else None
        print0(f"rl: policy {ck.path}, reference {rck.path}")
    if ref is None:
        ref = copy.deepcopy(policy)
    policy.to(device).eval()
    ref.to(device).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    if cfg.reward == "rm" and rm_scorer is None:
        from chatforge.reward import load_reward_model, rm_reward_fn
        rm = load_reward_model(cfg.rm or run_dir(cfg.run) / "rm", device)
        if rm.tokenizer.n_vocab != tokenizer.n_vocab:
            raise CfError(f"rm: reward model tokenizer ({rm.tokenizer.n_vocab} tokens) differs from the policy's "
                          f"({tokenizer.n_vocab}); expected checkpoints of the same run")
        rm_scorer = rm_reward_fn(rm, tokenizer, device)
    style = cfg.style if cfg.task == "world" else "none"
    if train_problems is None:
        train_problems = styled(load_task(cfg.task, "train", cfg.seed, cfg.train_problems or None, cfg.run), style)
    if eval_problems is None:
        eval_problems = styled(load_task(cfg.task, "test", cfg.seed, cfg.eval_problems, cfg.run), style) \
            if cfg.eval_problems > 0 else []
    L = policy.config.seq_len
    train_problems = fitting(tokenizer, train_problems, L, cfg.max_new_tokens, "training problems")
    eval_problems = fitting(tokenizer, eval_problems, L, cfg.max_new_tokens, "held-out problems")
    if not train_problems:
        raise CfError(f"task {cfg.task!r}: no training problems (that fit the {L}-token context)")
    rng = random.Random(cfg.seed)
    reward_fn = make_reward_fn(cfg, rng, rm_scorer)
    engine = make_engine(policy, tokenizer, use_tools=cfg.style == "tool" or cfg.task != "world")
    opt = build_optimizer(policy, cfg)
    pad_id = tokenizer.bos_id
    history: list[dict] = []
    evals: list[dict] = []   # held-out pass@k (before, during, after)
    probes: list[dict] = []  # probe(...) measurements

    def run_eval(step: int) -> None:
        if probe is not None:
            with Timer("rl probe", quiet=True) as te:
                pr = probe(engine, policy, ref)
            probes.append({"step": step, **pr, "eval_s": te.seconds})
            print0(f"rl probe step {step}: " + " ".join(f"{k} {v:.3f}" for k, v in pr.items()
                                                       if isinstance(v, float)))
        if eval_problems and cfg.eval_k >= 1:
            with Timer("rl eval", quiet=True) as te:
                ev = evaluate_problems(engine, tokenizer, eval_problems, cfg.eval_k, cfg.max_new_tokens,
                                       cfg.temperature, seed=10_000 + cfg.seed)
            evals.append({"step": step, **ev, "eval_s": te.seconds})
            print0(f"rl eval step {step}: pass@1 {ev['pass@1']:.3f} pass@{cfg.eval_k} {ev[f'pass@{cfg.eval_k}']:.3f} "
                   f"greedy {ev['greedy_acc']:.3f} ({te.seconds:.1f}s)")

    t_start = time.perf_counter()
    if before is not None:  # the caller already measured this policy (e.g. the random-reward control)
        evals.append({"step": 0, **before})
    else:
        run_eval(0)
    t0 = time.perf_counter()  # the budget covers training (and the evaluations during it), >= 1 step
    budget = cfg.budget_s - (2 * (t0 - t_start) if cfg.budget_covers_eval else 0.0)  # final eval ~ first
    step = 0
    for step in range(1, cfg.steps + 1):
        if cfg.budget_s and step > 1 and time.perf_counter() - t0 > budget:
            print0(f"rl: time budget {budget:.0f}s reached after {step - 1} steps")
            step -= 1
            break
        batch = [train_problems[rng.randrange(len(train_problems))] for _ in range(cfg.prompts_per_step)]
        tg = time.perf_counter()
        P, R, M, X, Q = rollout_step(engine, tokenizer, batch, cfg, seed=cfg.seed + step)
        gen_s = time.perf_counter() - tg
        rewards = safe_rewards(reward_fn, X, Q, cfg.reward)
        rec: dict = {"step": step, "reward": sum(rewards) / len(rewards)}
        if cfg.reward != "random":
            rec["acc"] = sum(exact_reward(x, q["answer"]) for x, q in zip(X, Q)) / len(X) if cfg.reward == "rule" else None
        shaped = list(rewards)
        if cfg.algo == "ppo":  # KL-in-reward (Ziegler 2019): r - beta * sum_t (logp - ref_logp)
            with torch.no_grad():
                ids, tgt = pack_sequences(P, R, M, pad_id)
                ids, tgt = ids.to(device), tgt.to(device)
                seq_kl = (token_logprobs(policy, ids, tgt) - token_logprobs(ref, ids, tgt)).sum(1).tolist()
            shaped = [r - cfg.kl_coef * k for r, k in zip(rewards, seq_kl)]
            rec["seq_kl"] = sum(seq_kl) / len(seq_kl)
        adv, zero_var = grpo_advantages_for(shaped, cfg.group_size, cfg.loss_norm)
        tt = time.perf_counter()
        ucfg = cfg if cfg.algo == "grpo" else RLConfig(**{**asdict(cfg), "kl_coef": 0.0})
        stats = rl_update(policy, ref if cfg.algo == "grpo" else None, opt, P, R, M, adv, ucfg, device, pad_id)
        if cfg.algo == "ppo":
            stats["kl"] = rec["seq_kl"] / max(1.0, sum(map(len, R)) / len(R))  # per token, for comparison
        rec.update(zero_var_frac=zero_var, resp_len=sum(map(len, R)) / len(R), gen_s=gen_s,
                   train_s=time.perf_counter() - tt, **stats)
        if observe is not None:
            rec.update(observe(X, Q))
        history.append(rec)
        print0(f"rl step {step:4d} reward {rec['reward']:.3f} zero-var {zero_var:.2f} len {rec['resp_len']:.1f} "
               f"kl {rec.get('kl', 0):.4f} (gen {gen_s:.1f}s, train {rec['train_s']:.1f}s)")
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            run_eval(step)
    if not (evals or probes) or (evals or probes)[-1]["step"] != step:
        run_eval(step)
    seconds = time.perf_counter() - t_start
    gen_total = sum(h["gen_s"] for h in history)
    metrics = {"algo": cfg.algo, "reward_kind": cfg.reward, "steps": step, "seconds": seconds,
               "gen_share": gen_total / max(1e-9, sum(h["gen_s"] + h["train_s"] for h in history)),
               "history": history, "evals": evals, "probes": probes, "before": evals[0] if evals else {},
               "after": evals[-1] if evals else {}}
    path = None
    if save:
        path = save_checkpoint_rl(out, step, policy, tokenizer, cfg, metrics)
        print0(f"rl: saved {path}")
    return path, metrics


def save_checkpoint_rl(out: Path, step: int, policy, tokenizer, cfg: RLConfig, metrics: dict) -> Path:
    from chatforge.checkpoint import save_checkpoint
    summary = {k: v for k, v in metrics.items() if k != "history"}
    path = save_checkpoint(out, step, policy, tokenizer, asdict(cfg), metrics=summary)
    atomic_write_json(Path(out) / "history.json", metrics)
    return Path(path)


# ============================================================================ CLI

def cli(argv: list[str]) -> None:
    p = make_parser("chatforge rl", "reinforcement learning: GRPO on verifiable rewards, or RLHF (--algo ppo)")
    add_config_args(p, RLConfig)
    args = p.parse_args(argv)
    cfg = config_from_args(RLConfig, args)
    if cfg.algo == "ppo" and not hasattr(args, "reward"):
        cfg = RLConfig(**{**asdict(cfg), "reward": "rm"})
    print_config(cfg, "rl config")
    with Timer("rl"):
        path, m = train_rl(cfg)
    b, a = m.get("before", {}), m.get("after", {})
    if a:
        print0(f"rl: pass@1 {b.get('pass@1', 0):.3f} -> {a.get('pass@1', 0):.3f}, greedy accuracy "
               f"{b.get('greedy_acc', 0):.3f} -> {a.get('greedy_acc', 0):.3f} on {a.get('n_problems')} held-out problems")


# ============================================================================ speedrun stages (chatforge.rlhf)

def run_rl_stage(run_dir_: str | Path, budget_s: float = 120.0, device: str = "cpu", **kw) -> tuple[str, dict]:
    """Speedrun stage: GRPO on the world's word problems from ``<run>/sft`` into ``<run>/rl/``;
    returns (markdown section, metrics). See ``chatforge.rlhf.run_rl_stage``."""
    from chatforge.rlhf import run_rl_stage as stage
    return stage(run_dir_, budget_s=budget_s, device=device, **kw)


def run_rlhf_stage(run_dir_: str | Path, budget_s: float = 300.0, device: str = "cpu", **kw) -> tuple[str, dict]:
    """The ``--full`` stage: reward model + RLHF + over-optimization + DPO + search table (chatforge.rlhf)."""
    from chatforge.rlhf import run_rlhf_stage as stage
    return stage(run_dir_, budget_s=budget_s, device=device, **kw)
