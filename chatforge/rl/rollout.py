"""Rollouts and log-probs: what GRPO, RLHF, DPO, best-of-N and expert iteration share.

- sampling: a group of responses to one prompt in one batched engine call (``sample_group``);
- packing: prompt + response rows into (inputs, targets) where only the tokens the policy *sampled*
  are targets (tool outputs the engine forced in are not trained), via the one ``collate``;
- log-probs: per token and per sequence, from GPT's per-token loss;
- held-out measurement: pass@1 / pass@k (Chen et al. 2021) and greedy accuracy.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Sequence

import torch

from chatforge.assistant.tasks import math_correct, prompt_tokens
from chatforge.assistant.tools import ToolBox
from chatforge.common import CfError
from chatforge.model.batching import collate
from chatforge.model.engine import Engine


def make_engine(model, tokenizer, use_tools: bool = True) -> Engine:
    """The sampling engine, with the calculator/python tools (what SFT's tool traces expect)."""
    return Engine(model, tokenizer, tools=ToolBox(enabled=("calculator", "python")) if use_tools else None)


def stop_ids(tokenizer) -> list[int]:
    return [tokenizer.special("<|assistant_end|>"), tokenizer.bos_id]


def sample_group(engine, prompt: list[int], n: int, max_new_tokens: int, temperature: float,
                 top_k: int | None, seed: int, stops: list[int]) -> list[tuple[list[int], list[int]]]:
    """n responses to one prompt in one batched engine call -> [(response tokens, sample mask)].

    The response keeps its final <|assistant_end|> (the policy chose to stop: that choice is trained).
    """
    return sample_groups(engine, [prompt], n, max_new_tokens, temperature, top_k, seed, stops)[0]


def sample_groups(engine, prompts: list[list[int]], n: int, max_new_tokens: int, temperature: float,
                  top_k: int | None, seed: int, stops: list[int]) -> list[list[tuple[list[int], list[int]]]]:
    """``sample_group`` for many prompts in one batched call (``Engine.generate_many_masked``): prompt j
    is seeded ``seed + j``, so the result equals sample_group(prompts[j], ..., seed + j) for each j."""
    seqs, masks = engine.generate_many_masked(prompts, max_new_tokens, temperature, top_k or None, seed,
                                              num_samples=n, stop_tokens=stops)
    pairs = [(list(s), list(m)) for s, m in zip(seqs, masks)]  # new tokens only (engine contract)
    return [pairs[j * n:(j + 1) * n] for j in range(len(prompts))]


def sample_texts(engine, tokenizer, problems: Sequence[dict], n: int, max_new_tokens: int,
                 temperature: float = 1.0, seed: int = 0) -> list[list[str]]:
    """n response texts per problem (greedy when temperature is 0: then n = 1 is enough); problem i
    seeded seed + i, all problems in one batched engine call."""
    stops = stop_ids(tokenizer)
    prompts = [prompt_tokens(tokenizer, p["question"]) for p in problems]
    return [[response_text(tokenizer, r, stops) for r, _ in outs]
            for outs in sample_groups(engine, prompts, n, max_new_tokens, temperature, None, seed, stops)]


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
    rows = [(list(p) + list(r), [0] * len(p) + list(masks[i] if masks is not None else [1] * len(r)))
            for i, (p, r) in enumerate(zip(prompts, responses))]
    return collate(rows, pad_id)


def token_logprobs(model, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T) log pi(target_t | ids_<=t), 0 where target is -1 (uses GPT's per-token loss)."""
    nll = model(ids, targets, reduction="none", targets_only=True)  # (B, T); no head on the prompt
    return -nll * (targets != -1).to(nll.dtype)


def sequence_logprobs(model, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) sum of the target tokens' log-probs (DPO, best-of-N KL)."""
    return token_logprobs(model, ids, targets).sum(dim=1)


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


# ----------------------------------------------------------------------------- held-out measurement

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


@torch.no_grad()
def evaluate_problems(engine, tokenizer, problems: list[dict], k: int, max_new_tokens: int,
                      temperature: float = 1.0, seed: int = 0) -> dict[str, float]:
    """pass@1 and pass@k (unbiased, n = k samples each), greedy accuracy, mean response length."""
    stops = stop_ids(tokenizer)
    p1 = pk = greedy = length = 0.0
    prompts = [prompt_tokens(tokenizer, prob["question"]) for prob in problems]
    sampled = sample_groups(engine, prompts, k, max_new_tokens, temperature, None, seed, stops)
    greedies = sample_groups(engine, prompts, 1, max_new_tokens, 0.0, None, seed, stops)
    for prob, outs, ((g, _),) in zip(problems, sampled, greedies):
        c = sum(math_correct(response_text(tokenizer, r, stops), prob["answer"]) for r, _ in outs)
        p1 += pass_at_k(k, int(c), 1)
        pk += pass_at_k(k, int(c), k)
        length += sum(len(r) for r, _ in outs) / k
        greedy += math_correct(response_text(tokenizer, g, stops), prob["answer"])
    n = max(1, len(problems))
    return {"pass@1": p1 / n, f"pass@{k}": pk / n, "greedy_acc": greedy / n, "greedy_correct": int(greedy),
            "n_problems": len(problems), "eval_len": length / n}
