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
KL to the reference. ``--reward shuffled`` is the control: the rule rewards permuted within each group keep the same
zero-variance structure but carry no signal, so any gain it shows is not learning (``--reward random``,
coin flips, is the older and noisier control).

RLHF (``--algo reinforce``): the reward is a learned reward model (``chatforge rm``) and the KL penalty
is folded into the reward per response as in Ziegler et al. 2019 / InstructGPT (r = RM - beta * KL(seq)).
Without a learned critic this is not PPO: it is REINFORCE with the group mean as the baseline (as in
RLOO, Ahmadian et al. 2024), one policy-gradient pass per batch. (``--algo ppo`` is the old, misleading
spelling of the same method and still works for one release.) Since the reward model
is only a proxy of what annotators want, optimizing it too hard lowers the true score ("reward model
over-optimization", Gao et al. 2022): ``rl.experiments.run_rlhf_stage`` measures exactly that on synthetic preferences
whose hidden true score we know.
"""
from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from chatforge.assistant.sandbox import add_unsafe_python_arg, apply_unsafe_python_arg
from chatforge.assistant.tasks import drop_overlong, exact_reward, load_task, prompt_tokens, rule_reward, with_style
from chatforge.common import (CfError, Timer, add_config_args, atomic_write_json, autocast_ctx, config_from_args,
                              get_device, make_parser, print0, print_config, run_dir, seed_all, train_dtype)
from chatforge.model.checkpoint import load_model, save_checkpoint
from chatforge.model.engine import Engine
from chatforge.model.optim import OptimConfig, Optimizers, build_optimizer
from chatforge.rl.reward import load_reward_model, rm_reward_fn
from chatforge.rl.rollout import (check_compatible, evaluate_problems, make_engine, pack_sequences, response_text,
                                  sample_groups, stop_ids, token_logprobs)

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


# ============================================================================ config

@dataclass
class RLConfig:
    run: str = field(default="default", metadata={"help": "run name (runs/<run>) or path"})
    init: str = field(default="", metadata={"help": "policy checkpoint to start from (default runs/<run>/sft)",
                                            "deprecated": ["--source"]})
    ref: str = field(default="", metadata={"help": "reference checkpoint for the KL (default: source)"})
    out: str = field(default="", metadata={"help": "output stage dir (default runs/<run>/rl; reinforce: rlhf)"})
    algo: str = field(default="grpo", metadata={"help": "grpo (clipped surrogate, KL in the loss) | reinforce "
                                                          "(RLHF: group-baseline REINFORCE, KL in the reward; "
                                                          "'ppo' is its deprecated name)",
                                                  "choices": ["grpo", "reinforce", "ppo"]})
    task: str = field(default="world", metadata={"help": "world | gsm8k | path/to/problems.jsonl"})
    style: str = field(default="tool", metadata={"help": "world prompts' answer style as in SFT (convo.MATH_STYLES): "
                                                         "tool (calculator) | worked | direct | none"})
    reward: str = field(default="rule", metadata={"help": "rule (exact+format) | shuffled (control: rule rewards "
                                                          "permuted within each group) | random (coin flips) | rm",
                                                  "choices": ["rule", "shuffled", "random", "rm"]})
    rm: str = field(default="", metadata={"help": "reward model checkpoint (default runs/<run>/rm)"})
    format_weight: float = field(default=0.1, metadata={"help": "rule reward bonus for the answer format"})
    steps: int = field(default=40, metadata={"help": "RL steps"})
    prompts_per_step: int = field(default=8, metadata={"help": "groups (prompts) per step"})
    group_size: int = field(default=8, metadata={"help": "G: responses sampled per prompt"})
    max_new_tokens: int = field(default=64, metadata={"help": "response length limit"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of rollouts"})
    top_k: int = field(default=0, metadata={"help": "top-k of rollouts (0 = off)"})
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adamw", lr=2e-5))
    clip_eps: float = field(default=0.2, metadata={"help": "PPO ratio clip epsilon"})
    kl_coef: float = field(default=0.02, metadata={"help": "beta: weight of the KL to the reference"})
    loss_norm: str = field(default="grpo", metadata={"help": "grpo | dr_grpo | token",
                                                     "choices": ["grpo", "dr_grpo", "token"]})
    ppo_epochs: int = field(default=1, metadata={"help": "optimization passes over each batch of rollouts"})
    eval_every: int = field(default=10, metadata={"help": "held-out evaluation every N steps (0 = ends only)"})
    eval_problems: int = field(default=32, metadata={"help": "held-out problems for pass@k"})
    eval_k: int = field(default=4, metadata={"help": "k of pass@k (samples per held-out problem)"})
    train_problems: int = field(default=0, metadata={"help": "limit of training problems (0 = all)"})
    time_budget: float = field(default=0.0, metadata={"help": "opt-in: stop after this many seconds (0 = off; "
                                                      "steps then vary with the machine)", "deprecated": ["--budget-s"]})
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
    if cfg.reward in ("rule", "shuffled"):  # shuffled: permuted per group in train_step
        return lambda texts, probs: [rule_reward(t, p["answer"], cfg.format_weight) for t, p in zip(texts, probs)]
    if cfg.reward == "random":
        return lambda texts, probs: [float(rng.random() < 0.5) for _ in texts]
    if cfg.reward == "rm":
        if rm_scorer is None:
            raise CfError("reward: 'rm' needs a reward model (--rm)")
        return rm_scorer
    raise CfError(f"reward: expected rule|shuffled|random|rm, got {cfg.reward!r}")


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
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], cfg.optim.grad_clip)
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
    prompts = [prompt_tokens(tokenizer, prob["question"]) for prob in problems]
    groups = sample_groups(engine, prompts, cfg.group_size, cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                           seed * 1000, stops)                  # problem j seeded seed * 1000 + j
    for prob, prompt, group in zip(problems, prompts, groups):
        for r, m in group:
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

@dataclass
class RLRun:
    """The state of one RL run: models, data, optimizer, and what has been measured so far."""
    cfg: RLConfig
    policy: Any
    ref: Any
    tokenizer: Any
    engine: Engine
    optimizer: Optimizers
    reward_fn: Callable[[list[str], list[dict]], list[float]]
    train_problems: list[dict]
    eval_problems: list[dict]
    rng: random.Random
    device: str
    out: Path
    probe: Callable[[Any, Any, Any], dict] | None = None
    history: list[dict] = field(default_factory=list)  # one record per step
    evals: list[dict] = field(default_factory=list)    # held-out pass@k (before, during, after)
    probes: list[dict] = field(default_factory=list)   # probe(...) measurements


def _resolve_paths(cfg: RLConfig) -> tuple[Path, Path, Path]:
    rd = run_dir(cfg.run)
    init = Path(cfg.init) if cfg.init else rd / "sft"
    ref = Path(cfg.ref) if cfg.ref else init
    out = Path(cfg.out) if cfg.out else rd / ("rlhf" if cfg.algo == "reinforce" else "rl")
    if out.resolve() == init.resolve() or out.resolve() in init.resolve().parents:
        raise CfError(f"out: {out} would write into the starting checkpoint {init}; choose another --out")
    return init, ref, out


def _load_models(cfg: RLConfig, init: Path, ref_path: Path, device: str):
    ck = load_model(init, device, what="policy")
    rck = ck if ref_path.resolve() == init.resolve() else load_model(ref_path, device, what="reference")
    if rck is not ck:
        check_compatible(ck, rck, str(ck.path), str(rck.path))
    print0(f"rl: policy {ck.path}, reference {rck.path}")
    return ck.model, ck.tokenizer, (rck.model if rck is not ck else None)


def setup_rl(cfg: RLConfig, policy=None, tokenizer=None, ref=None, train_problems: list[dict] | None = None,
             eval_problems: list[dict] | None = None, rm_scorer: Callable | None = None) -> RLRun:
    """Validate the config, load what was not passed in, and build the run's state."""
    for name in ("steps", "prompts_per_step", "group_size", "max_new_tokens"):
        if getattr(cfg, name) < 1:
            raise CfError(f"rl config: {name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.group_size < 2:
        raise CfError("rl config: group_size must be >= 2 (the baseline is the group mean)")
    seed_all(cfg.seed)
    device = get_device(cfg.device)
    init, ref_path, out = _resolve_paths(cfg)
    if policy is None:
        policy, tokenizer, ref = _load_models(cfg, init, ref_path, device)
    ref = ref if ref is not None else copy.deepcopy(policy)
    policy.to(device).eval()
    ref.to(device).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    if cfg.reward == "rm" and rm_scorer is None:
        rm = load_reward_model(cfg.rm or run_dir(cfg.run) / "rm", device)
        if rm.tokenizer.n_vocab != tokenizer.n_vocab:
            raise CfError(f"rm: reward model tokenizer ({rm.tokenizer.n_vocab} tokens) differs from the policy's "
                          f"({tokenizer.n_vocab}); expected checkpoints of the same run")
        rm_scorer = rm_reward_fn(rm, tokenizer, device)
    style = cfg.style if cfg.task == "world" else "none"
    if train_problems is None:
        train_problems = with_style(load_task(cfg.task, "train", cfg.seed, cfg.train_problems or None, cfg.run), style)
    if eval_problems is None:
        eval_problems = with_style(load_task(cfg.task, "test", cfg.seed, cfg.eval_problems, cfg.run), style) \
            if cfg.eval_problems > 0 else []
    L = policy.config.seq_len
    train_problems = drop_overlong(tokenizer, train_problems, L, cfg.max_new_tokens, "training problems")
    eval_problems = drop_overlong(tokenizer, eval_problems, L, cfg.max_new_tokens, "held-out problems")
    if not train_problems:
        raise CfError(f"task {cfg.task!r}: no training problems (that fit the {L}-token context)")
    rng = random.Random(cfg.seed)
    return RLRun(cfg=cfg, policy=policy, ref=ref, tokenizer=tokenizer,
                 engine=make_engine(policy, tokenizer, use_tools=cfg.style == "tool" or cfg.task != "world"),
                 optimizer=build_optimizer(policy, cfg.optim, train_dtype(device, cfg.dtype)),
                 reward_fn=make_reward_fn(cfg, rng, rm_scorer),
                 train_problems=train_problems, eval_problems=eval_problems, rng=rng, device=device, out=out)


def measure(run: RLRun, step: int) -> None:
    """The held-out measurements at ``step``: the caller's probe, then pass@1/pass@k and greedy accuracy."""
    cfg = run.cfg
    if run.probe is not None:
        with Timer("rl probe", quiet=True) as te:
            pr = run.probe(run.engine, run.policy, run.ref)
        run.probes.append({"step": step, **pr, "eval_s": te.seconds})
        print0(f"rl probe step {step}: " + " ".join(f"{k} {v:.3f}" for k, v in pr.items() if isinstance(v, float)))
    if run.eval_problems and cfg.eval_k >= 1:
        with Timer("rl eval", quiet=True) as te:
            ev = evaluate_problems(run.engine, run.tokenizer, run.eval_problems, cfg.eval_k, cfg.max_new_tokens,
                                   cfg.temperature, seed=10_000 + cfg.seed)
        run.evals.append({"step": step, **ev, "eval_s": te.seconds})
        print0(f"rl eval step {step}: pass@1 {ev['pass@1']:.3f} pass@{cfg.eval_k} {ev[f'pass@{cfg.eval_k}']:.3f} "
               f"greedy {ev['greedy_acc']:.3f} ({te.seconds:.1f}s)")


def shuffle_within_groups(rewards: list[float], G: int, rng: random.Random) -> list[float]:
    """The control's rewards: each group's rewards permuted (same values, same zero-variance groups,
    no link between a response and its reward)."""
    out = []
    for j in range(0, len(rewards), G):
        group = rewards[j:j + G]
        rng.shuffle(group)
        out += group
    return out


def train_step(run: RLRun, step: int, observe: Callable[[list[str], list[dict]], dict] | None = None) -> dict:
    """One RL step: sample G responses for a batch of problems, score them, update the policy."""
    cfg, tok = run.cfg, run.tokenizer
    batch = [run.train_problems[run.rng.randrange(len(run.train_problems))] for _ in range(cfg.prompts_per_step)]
    tg = time.perf_counter()
    P, R, M, X, Q = rollout_step(run.engine, tok, batch, cfg, seed=cfg.seed + step)
    gen_s = time.perf_counter() - tg
    rewards = safe_rewards(run.reward_fn, X, Q, cfg.reward)
    if cfg.reward == "shuffled":
        rewards = shuffle_within_groups(rewards, cfg.group_size, run.rng)
    rec: dict = {"step": step, "reward": sum(rewards) / len(rewards)}
    if cfg.reward in ("rule", "shuffled"):
        rec["acc"] = sum(exact_reward(x, q["answer"]) for x, q in zip(X, Q)) / len(X)
    shaped = list(rewards)
    if cfg.algo == "reinforce":  # KL-in-reward (Ziegler 2019): r - beta * sum_t (logp - ref_logp)
        with torch.no_grad():
            ids, tgt = pack_sequences(P, R, M, tok.bos_id)
            ids, tgt = ids.to(run.device), tgt.to(run.device)
            seq_kl = (token_logprobs(run.policy, ids, tgt) - token_logprobs(run.ref, ids, tgt)).sum(1).tolist()
        shaped = [r - cfg.kl_coef * k for r, k in zip(rewards, seq_kl)]
        rec["seq_kl"] = sum(seq_kl) / len(seq_kl)
    adv, zero_var = grpo_advantages_for(shaped, cfg.group_size, cfg.loss_norm)
    tt = time.perf_counter()
    update_cfg = cfg if cfg.algo == "grpo" else replace(cfg, kl_coef=0.0)  # reinforce: the KL is already in the reward
    stats = rl_update(run.policy, run.ref if cfg.algo == "grpo" else None, run.optimizer, P, R, M, adv, update_cfg,
                      run.device, tok.bos_id)
    if cfg.algo == "reinforce":
        stats["kl"] = rec["seq_kl"] / max(1.0, sum(map(len, R)) / len(R))  # per token, for comparison
    rec.update(zero_var_frac=zero_var, resp_len=sum(map(len, R)) / len(R), gen_s=gen_s,
               train_s=time.perf_counter() - tt, **stats)
    if observe is not None:
        rec.update(observe(X, Q))
    print0(f"rl step {step:4d} reward {rec['reward']:.3f} zero-var {zero_var:.2f} len {rec['resp_len']:.1f} "
           f"kl {rec.get('kl', 0):.4f} (gen {gen_s:.1f}s, train {rec['train_s']:.1f}s)")
    return rec


def train_rl(cfg: RLConfig, policy=None, tokenizer=None, ref=None, train_problems: list[dict] | None = None,
             eval_problems: list[dict] | None = None, rm_scorer: Callable | None = None,
             observe: Callable[[list[str], list[dict]], dict] | None = None,
             probe: Callable[[object, object, object], dict] | None = None, save: bool = True,
             before: dict | None = None) -> tuple[Path | None, dict]:
    """Run GRPO (or RLHF with ``algo='reinforce'``) and return (checkpoint path or None, metrics).

    Everything may be passed in-process (tests, speedrun); otherwise checkpoints are read from
    ``cfg.init``/``cfg.ref`` and problems from ``cfg.task``. ``observe(texts, problems) -> dict`` adds
    per-step metrics (the over-optimization experiment logs the hidden true score with it);
    ``probe(engine, policy, ref) -> dict`` runs at every evaluation (fixed held-out measurements);
    ``before``: the caller already measured this policy (e.g. for a control run from the same start).
    ``cfg.steps`` fixes the run; the opt-in ``time_budget`` may stop it earlier (>= 1 step).
    Nothing is written unless the whole run succeeds.
    """
    if cfg.algo == "ppo":
        print0("rl: --algo ppo is deprecated (no critic, so it is not PPO); running --algo reinforce")
        cfg = replace(cfg, algo="reinforce")
    run = setup_rl(cfg, policy, tokenizer, ref, train_problems, eval_problems, rm_scorer)
    run.probe = probe
    t_start = time.perf_counter()
    if before is not None:
        run.evals.append({"step": 0, **before})
    else:
        measure(run, 0)
    t0 = time.perf_counter()
    budget = cfg.time_budget - (2 * (t0 - t_start) if cfg.budget_covers_eval else 0.0)  # final eval ~ first
    step = 0
    for step in range(1, cfg.steps + 1):
        if cfg.time_budget and step > 1 and time.perf_counter() - t0 > budget:
            print0(f"rl: time budget {budget:.0f}s reached after {step - 1} steps")
            step -= 1
            break
        run.history.append(train_step(run, step, observe))
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            measure(run, step)
    if not (run.evals or run.probes) or (run.evals or run.probes)[-1]["step"] != step:
        measure(run, step)
    gen_total = sum(h["gen_s"] for h in run.history)
    metrics = {"algo": cfg.algo, "reward_kind": cfg.reward, "steps": step, "seconds": time.perf_counter() - t_start,
               "gen_share": gen_total / max(1e-9, sum(h["gen_s"] + h["train_s"] for h in run.history)),
               "history": run.history, "evals": run.evals, "probes": run.probes,
               "before": run.evals[0] if run.evals else {}, "after": run.evals[-1] if run.evals else {}}
    path = None
    if save:
        path = save_checkpoint_rl(run.out, step, run.policy, run.tokenizer, cfg, metrics)
        print0(f"rl: saved {path}")
    return path, metrics


def save_checkpoint_rl(out: Path, step: int, policy, tokenizer, cfg: RLConfig, metrics: dict) -> Path:
    summary = {k: v for k, v in metrics.items() if k != "history"}
    path = save_checkpoint(out, step, policy, tokenizer, asdict(cfg), metrics=summary)
    atomic_write_json(Path(out) / "history.json", metrics)
    return Path(path)


# ============================================================================ CLI

def cli(argv: list[str]) -> None:
    p = make_parser("chatforge rl", "reinforcement learning: GRPO on verifiable rewards, or RLHF (--algo reinforce)")
    add_config_args(p, RLConfig)
    add_unsafe_python_arg(p)
    args = p.parse_args(argv)
    apply_unsafe_python_arg(args)
    cfg = config_from_args(RLConfig, args)
    if cfg.algo in ("reinforce", "ppo") and not hasattr(args, "reward"):
        cfg = replace(cfg, reward="rm")
    print_config(cfg, "rl config")
    with Timer("rl"):
        path, m = train_rl(cfg)
    b, a = m.get("before", {}), m.get("after", {})
    if a:
        print0(f"rl: pass@1 {b.get('pass@1', 0):.3f} -> {a.get('pass@1', 0):.3f}, greedy accuracy "
               f"{b.get('greedy_acc', 0):.3f} -> {a.get('greedy_acc', 0):.3f} on {a.get('n_problems')} held-out problems")
