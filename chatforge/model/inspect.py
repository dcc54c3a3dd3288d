"""Look inside a checkpoint: the logit lens, attention maps and the residual stream of one prompt.

A decoder-only Transformer keeps one vector per position, the *residual stream* x (B, T, C). The
embedding writes it, every block adds two updates to it (attention, then the MLP), and at the end
``norm_f`` + ``lm_head`` read it out as next-token scores. Three ways to watch that happen:

- **Logit lens** (nostalgebraist 2020, "interpreting GPT: the logit lens"): apply the model's own
  final norm and unembedding to the residual stream after *every* layer, as if the network stopped
  there. Layer 0 is the bare embedding (a bigram guess at best); the last layer is, by construction,
  exactly the model's logits. Watching the top-5 guesses and the probability of the final answer
  change layer by layer shows where the prediction forms.
- **Attention maps**: head h of layer l mixes positions with weights
  ``softmax(q k^T / sqrt(d) + causal mask)`` (Vaswani et al. 2017, eq. 1), one (T, T) matrix per head,
  each row a distribution over the positions it may see (itself and earlier ones). The model computes
  attention with fused SDPA, which never materialises the weights, so this module recomputes them
  explicitly from the same q and k (``Attention.project``); the final-layer lens matching the model's
  logits checks that the explicit path is the model's computation (the slow twin of SDPA).
- **Residual norms**: ||x|| per layer, and the size of what attention and the MLP add to it.

``internals(model, tokenizer, ids)`` returns all of it as one JSON-ready dict; ``render_text`` prints
it for the terminal (``chatforge inspect``) and the web UI draws it (POST /v1/internals).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from chatforge.common import (add_config_args, atomic_write_json, CfError, config_from_args, get_device, make_parser,
                              run_dir)
from chatforge.model.checkpoint import load_checkpoint

SHADES = " .:-=+*#%@"   # ASCII heatmap, light to dark


# ----------------------------------------------------------------------------- the explicit forward

def explicit_attention(attn: torch.nn.Module, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """One attention layer written out: h (B, T, C) normed input -> (output (B, T, C), weights (B, H, T, T)).

    The same q, k, v as the fused path (``attn.project``); GQA query head i reads kv head
    i // (n_head / n_kv_head), as SDPA's enable_gqa and HF's repeat_kv do."""
    B, T, C = h.shape
    q, k, v = attn.project(h, rope)                                   # (B, H, T, d), (B, Hkv, T, d) x2
    rep = attn.n_head // attn.n_kv_head
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)   # (B, H, T, d)
    scores = q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)       # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
    weights = F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)   # rows sum to 1
    y = (weights @ v).transpose(1, 2).reshape(B, T, C)                # (B, T, C)
    return attn.c_proj(y), weights


@torch.no_grad()
def residual_stream(model: torch.nn.Module, idx: torch.Tensor) -> dict[str, Any]:
    """idx (1, T) -> the residual stream after the embedding and after each block (L+1 tensors (1, T, C)),
    each block's attention and MLP outputs and attention weights (1, H, T, T)."""
    x, rope = model.embed(idx)                                        # (1, T, C)
    out: dict[str, list] = {"resid": [x], "attn_out": [], "mlp_out": [], "weights": []}
    for block in model.blocks:
        a, w = explicit_attention(block.attn, block.norm_1(x), rope)
        x = x + a
        m = block.mlp(block.norm_2(x))
        x = x + m
        out["resid"].append(x)
        out["attn_out"].append(a)
        out["mlp_out"].append(m)
        out["weights"].append(w)
    return out


def lens_logits(model: torch.nn.Module, resid: list[torch.Tensor]) -> torch.Tensor:
    """The logit lens: final norm + unembedding on every layer's residual stream -> (L+1, T, V) float32."""
    x = torch.cat(resid, dim=0)                                       # (L+1, T, C)
    return model.lm_head(model.norm_f(x)).float()


# ----------------------------------------------------------------------------- the JSON structure

def _shapes(c: Any, T: int) -> list[dict[str, Any]]:
    """The tensors of one forward pass (B = 1), in order, for teaching."""
    H, Hkv, d, C, V = c.n_head, c.n_kv_head, c.head_dim, c.n_embd, c.vocab_size
    rows = [("idx", [1, T], "token ids (B, T)"),
            ("wte(idx)" + (" + wpe" if c.pos == "learned" else ""), [1, T, C], "residual stream x (B, T, C)"),
            ("q = c_q(norm_1(x))" + (" + RoPE" if c.pos == "rope" else ""), [1, H, T, d], f"{H} query heads of width {d}"),
            ("k, v", [1, Hkv, T, d], f"{Hkv} key/value heads" + (" (GQA: shared)" if Hkv < H else "")),
            ("q k^T / sqrt(d), causal softmax", [1, H, T, T], "attention weights: one (T, T) map per head"),
            ("weights @ v, heads concatenated", [1, T, C], "then c_proj, added to x"),
            ("mlp(norm_2(x))", [1, T, c.mlp_hidden], f"{c.mlp} hidden layer, back to C and added to x"),
            (f"x after each of {c.n_layer} blocks", [1, T, C], "same shape all the way up"),
            ("lm_head(norm_f(x))", [1, T, V], "logits over the vocabulary")]
    return [{"name": n, "shape": s, "note": note} for n, s, note in rows]


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


def _rounded(t: torch.Tensor, nd: int) -> list:
    """A tensor as nested lists of floats rounded to nd decimals (in torch, float64: Python's round on
    every element is most of the cost for a 256-token prompt)."""
    return t.double().round(decimals=nd).tolist()


@torch.no_grad()
def internals(model: torch.nn.Module, tokenizer: Any, ids: list[int], top_k: int = 5,
              answer_id: int | None = None) -> dict[str, Any]:
    """Everything the viewer shows for one prompt ``ids`` (1..seq_len token ids).

    ``answer_id``: the token whose probability is followed layer by layer at the last position
    (default: the model's own top-1 prediction there)."""
    c = model.config
    n_real = min(getattr(tokenizer, "n_vocab", c.vocab_size), c.vocab_size)   # padded rows are never shown
    if not 1 <= len(ids) <= c.seq_len:
        raise CfError(f"inspect: the prompt has {len(ids)} tokens; expected 1..{c.seq_len} (the context length)")
    if any(not 0 <= i < n_real for i in ids):
        raise CfError(f"inspect: token ids must be in 0..{n_real - 1}")
    model.eval()
    idx = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)   # (1, T)
    s = residual_stream(model, idx)
    lens = lens_logits(model, s["resid"])                            # (L+1, T, V)
    final = model(idx)[0].float()                                    # (T, V): the model's own forward
    lens_diff = (lens[-1] - final).abs().max().item()
    probs = F.softmax(lens[:, :, :n_real], dim=-1)                   # (L+1, T, V')
    top_p, top_i = probs.topk(min(top_k, n_real), dim=-1)            # (L+1, T, k)
    top_p, top_i = _rounded(top_p, 4), top_i.tolist()
    if answer_id is None:
        answer_id = int(probs[-1, -1].argmax())
    if not 0 <= answer_id < n_real:
        raise CfError(f"inspect: answer token id must be in 0..{n_real - 1}")
    pieces: dict[int, str] = {}

    def piece(i: int) -> str:
        if i not in pieces:
            pieces[i] = tokenizer.decode([i])
        return pieces[i]

    names = ["embedding"] + [f"block {i + 1}" for i in range(c.n_layer)]
    norms = [r[0].norm(dim=-1) for r in s["resid"]]                   # (T,) per layer
    return {
        "tokens": [{"id": i, "text": piece(i)} for i in ids],
        "config": {k: getattr(c, k) for k in ("n_layer", "n_head", "n_kv_head", "head_dim", "n_embd",
                                              "mlp_hidden", "vocab_size", "seq_len", "pos", "norm", "mlp")},
        "shapes": _shapes(c, len(ids)),
        "lens": [{"layer": l, "name": names[l],
                  "top": [[{"id": i, "text": piece(i), "p": p} for p, i in zip(top_p[l][t], top_i[l][t])]
                          for t in range(len(ids))]} for l in range(c.n_layer + 1)],
        "answer": {"id": answer_id, "text": piece(answer_id),
                   "p": [_r(probs[l, -1, answer_id], 6) for l in range(c.n_layer + 1)]},
        # [layer][head][query t][key <= t] in thousandths: integers halve the JSON and its encoding time
        "attention_permille": [[[row[:t + 1] for t, row in enumerate(head)] for head in (w[0] * 1000).round().int().tolist()]
                               for w in s["weights"]],
        "residual": [{"layer": l, "name": names[l], "norm": _r(n.mean()), "per_position": _rounded(n, 3)}
                     for l, n in enumerate(norms)],
        "contrib": [{"layer": l + 1, "attn": _r(a[0].norm(dim=-1).mean()), "mlp": _r(m[0].norm(dim=-1).mean())}
                    for l, (a, m) in enumerate(zip(s["attn_out"], s["mlp_out"]))],
        "lens_vs_logits_max_abs_diff": lens_diff,
    }


# ----------------------------------------------------------------------------- terminal rendering

def _cell(s: str, w: int) -> str:
    s = json.dumps(s, ensure_ascii=False)[1:-1]          # newlines and tabs visible
    return (s if len(s) <= w else s[:w - 1] + "~").ljust(w)


def heatmap(rows: list[list[int]]) -> list[str]:
    """A lower-triangular attention map (weights in thousandths) as ASCII shades (row = query, column =
    key). The shade follows sqrt(weight), so a weight of 0.04 is still visible next to a 0.9."""
    return ["".join(SHADES[min(len(SHADES) - 1, int(math.sqrt(v / 1000) * len(SHADES)))] for v in row) for row in rows]


def render_text(obj: dict[str, Any], max_positions: int = 8, max_heatmap: int = 24) -> str:
    """The internals dict as text: shapes, the lens (last positions), the answer per layer, norms, attention."""
    toks = [t["text"] for t in obj["tokens"]]
    T = len(toks)
    shown = list(range(max(0, T - max_positions), T))
    out = [f"{T} tokens: " + " ".join(f"[{t}]{_cell(x, 12).rstrip()}" for t, x in enumerate(toks)), "",
           "Tensor shapes (B = 1):"]
    out += [f"  {r['name']:<40} {str(tuple(r['shape'])):<22} {r['note']}" for r in obj["shapes"]]
    out += ["", f"Logit lens: top-1 guess (p) for the next token after each layer, last {len(shown)} positions"]
    out.append(" " * 12 + "".join(_cell(f"{t}:{toks[t]}", 14) for t in shown))
    for row in obj["lens"]:
        out.append(f"  {row['name']:<10}" + "".join(
            _cell(f"{row['top'][t][0]['text']} {row['top'][t][0]['p']:.2f}", 14) for t in shown))
    out += ["", "Top-5 at the last position:"]
    for row in obj["lens"]:
        out.append(f"  {row['name']:<10} " + "  ".join(f"{_cell(c['text'], 10).rstrip()} {c['p']:.3f}"
                                                         for c in row["top"][-1]))
    a = obj["answer"]
    out += ["", f"Probability of the final answer {_cell(a['text'], 20).rstrip()!r} (id {a['id']}) per layer:"]
    out += [f"  {row['name']:<10} {p:7.4f} " + "#" * round(40 * p) for row, p in zip(obj["lens"], a["p"])]
    out += ["", "Residual stream: mean ||x|| per layer, and the mean size of what each block adds:"]
    for r in obj["residual"]:
        add = next((f"   attn +{c['attn']:.3f}  mlp +{c['mlp']:.3f}" for c in obj["contrib"] if c["layer"] == r["layer"]), "")
        out.append(f"  {r['name']:<10} {r['norm']:9.3f}{add}")
    out += ["", f"Lens at the last layer vs the model's logits: max |diff| = {obj['lens_vs_logits_max_abs_diff']:.2e}", ""]
    for l, heads in enumerate(obj["attention_permille"]):
        for h, rows in enumerate(heads):
            if T <= max_heatmap:
                out.append(f"Attention layer {l + 1} head {h + 1} (row = query, column = key; darker = more):")
                out += [f"  {_cell(toks[t], 10)} |{line}" for t, line in enumerate(heatmap(rows))]
            else:
                best = sorted(range(T), key=lambda j: -rows[-1][j])[:3]
                out.append(f"Attention layer {l + 1} head {h + 1}: the last token attends most to " +
                           ", ".join(f"{j}:{_cell(toks[j], 10).rstrip()!r} {rows[-1][j] / 1000:.2f}" for j in best))
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- prompts and CLI

def prompt_ids(tokenizer: Any, text: str, chat: bool) -> list[int]:
    """The ids the viewer runs: ``<|bos|>`` + text, or (chat) the text as a user message ready for the
    assistant's reply (ending with ``<|assistant_start|>``)."""
    if chat:
        return tokenizer.render_for_completion({"messages": [{"role": "user", "content": text}]})
    return [tokenizer.bos_id] + tokenizer.encode(text)


def answer_token(tokenizer: Any, answer: str) -> int | None:
    """The first token of ``answer`` (None for an empty answer: follow the model's own top-1)."""
    ids = tokenizer.encode(answer) if answer else []
    return ids[0] if ids else None


@dataclass
class InspectConfig:
    ckpt: str = field(default="", metadata={"help": "checkpoint (a step folder or a stage folder)"})
    run: str = field(default="", metadata={"help": "run directory: inspects its --stage checkpoint"})
    stage: str = field(default="sft", metadata={"help": "stage folder of --run (base, sft, rl, ...)"})
    chat: bool = field(default=False, metadata={"help": "render the text as a user message (chat models)"})
    answer: str = field(default="", metadata={"help": "follow this answer's first token (default: the model's top-1)"})
    top_k: int = field(default=5, metadata={"help": "lens guesses kept per layer and position"})
    json: str = field(default="", metadata={"help": "also write the internals JSON to this file"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda | mps | auto"})


def cli(argv: list[str]) -> None:
    parser = make_parser("chatforge inspect", "look inside a checkpoint: logit lens, attention maps, residual stream")
    add_config_args(parser, InspectConfig)
    parser.add_argument("text", help="the prompt")
    args = parser.parse_args(argv)
    cfg = config_from_args(InspectConfig, args)
    if bool(cfg.ckpt) == bool(cfg.run):
        raise CfError("inspect: give exactly one of --ckpt PATH or --run DIR")
    ck = load_checkpoint(cfg.ckpt or run_dir(cfg.run) / cfg.stage, device=get_device(cfg.device))
    ids = prompt_ids(ck.tokenizer, args.text, cfg.chat)
    obj = internals(ck.model, ck.tokenizer, ids, top_k=cfg.top_k, answer_id=answer_token(ck.tokenizer, cfg.answer))
    print(f"checkpoint {ck.path}")
    print(render_text(obj), end="")
    if cfg.json:
        atomic_write_json(cfg.json, obj)
        print(f"internals JSON -> {cfg.json}")
