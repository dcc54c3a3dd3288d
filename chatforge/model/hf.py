"""Weights interop: HF transformers folders (GPT-2, Llama) and llama2.c ``.bin`` files <-> our GPT.

Name maps (ours -> HF), per layer i::

    ours                         GPT2LMHeadModel (Conv1D: weights stored (in, out))      LlamaForCausalLM
    wte.weight                   transformer.wte.weight                                   model.embed_tokens.weight
    wpe.weight                   transformer.wpe.weight                                   -
    blocks.i.norm_1.*            transformer.h.i.ln_1.*                                   model.layers.i.input_layernorm.weight
    blocks.i.attn.c_{q,k,v}.*    transformer.h.i.attn.c_attn.* (q|k|v fused, transposed)  ...self_attn.{q,k,v}_proj.*
    blocks.i.attn.c_proj.*       transformer.h.i.attn.c_proj.* (transposed)               ...self_attn.o_proj.*
    blocks.i.norm_2.*            transformer.h.i.ln_2.*                                   ...post_attention_layernorm.weight
    blocks.i.mlp.c_gate.*        -                                                        ...mlp.gate_proj.*
    blocks.i.mlp.c_fc.*          transformer.h.i.mlp.c_fc.* (transposed)                  ...mlp.up_proj.*
    blocks.i.mlp.c_proj.*        transformer.h.i.mlp.c_proj.* (transposed)                ...mlp.down_proj.*
    norm_f.*                     transformer.ln_f.*                                       model.norm.weight
    lm_head.weight               lm_head.weight (absent when tied)                        lm_head.weight (absent when tied)

Our RoPE already uses HF's rotate_half layout, so q/k rows need no permutation for HF. llama2.c
(like Meta's original checkpoints) rotates interleaved pairs (2j, 2j+1); ``from_llama2c`` permutes the
q/k rows into the rotate_half layout, as HF's convert_llama_weights_to_hf does.
Only safetensors are read (never pickles).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from chatforge.common import atomic_path, atomic_write_json, CfError, check_out_dir, make_parser, print0, read_json
from chatforge.model.checkpoint import save_checkpoint
from chatforge.model.gpt import GPT, GPTConfig





# ----------------------------------------------------------------------------- which HF architecture

def hf_architecture(c: GPTConfig) -> str:
    """'gpt2' or 'llama': the HF class that computes exactly what this config computes."""
    if c.pos == "learned" and c.norm == "layernorm" and c.mlp == "gelu" and c.n_kv_head == c.n_head:
        return "gpt2"
    if c.pos == "rope" and c.norm == "rmsnorm" and c.mlp == "swiglu":
        return "llama"
    raise CfError(f"GPTConfig: no HF architecture for pos={c.pos}, norm={c.norm}, mlp={c.mlp}, "
                  f"n_kv_head={c.n_kv_head}/{c.n_head}; expected GPT-2 (learned/layernorm/gelu, MHA) "
                  f"or Llama (rope/rmsnorm/swiglu)")


def hf_config(c: GPTConfig) -> dict:
    """config.json contents for our config."""
    if hf_architecture(c) == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
                "n_positions": c.seq_len, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
                "n_inner": c.mlp_hidden, "activation_function": "gelu_new", "layer_norm_epsilon": c.norm_eps,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "scale_attn_weights": True,
                "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
                "tie_word_embeddings": c.tie_embeddings, "bos_token_id": None, "eos_token_id": None,
                "torch_dtype": "float32"}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
            "hidden_size": c.n_embd, "intermediate_size": c.mlp_hidden, "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim,
            "hidden_act": "silu", "max_position_embeddings": c.seq_len, "rms_norm_eps": c.norm_eps,
            # both spellings: transformers >= 5 reads rope_parameters, 4.x reads rope_theta
            "rope_theta": c.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
            "attention_bias": c.bias, "mlp_bias": c.bias, "attention_dropout": 0.0,
            "tie_word_embeddings": c.tie_embeddings, "bos_token_id": None, "eos_token_id": None,
            "torch_dtype": "float32"}


# ----------------------------------------------------------------------------- state dict maps

def _llama_names(i: int) -> dict[str, str]:
    p, h = f"blocks.{i}.", f"model.layers.{i}."
    return {p + "norm_1.weight": h + "input_layernorm.weight", p + "norm_2.weight": h + "post_attention_layernorm.weight",
            p + "attn.c_q": h + "self_attn.q_proj", p + "attn.c_k": h + "self_attn.k_proj",
            p + "attn.c_v": h + "self_attn.v_proj", p + "attn.c_proj": h + "self_attn.o_proj",
            p + "mlp.c_gate": h + "mlp.gate_proj", p + "mlp.c_fc": h + "mlp.up_proj",
            p + "mlp.c_proj": h + "mlp.down_proj"}


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    c = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    if hf_architecture(c) == "gpt2":
        C = c.n_embd

        def b(name: str, n: int) -> torch.Tensor:   # HF GPT-2 always has biases: zeros when we have none
            return sd.get(name, torch.zeros(n))
        out["transformer.wte.weight"] = sd["wte.weight"]
        out["transformer.wpe.weight"] = sd["wpe.weight"]
        for i in range(c.n_layer):
            p, h = f"blocks.{i}.", f"transformer.h.{i}."
            for ours, theirs in (("norm_1", "ln_1"), ("norm_2", "ln_2")):
                out[h + theirs + ".weight"] = sd[p + ours + ".weight"]
                out[h + theirs + ".bias"] = b(p + ours + ".bias", C)
            # Conv1D computes x @ W + b with W (in, out): our Linear weights transposed; q|k|v fused on out
            out[h + "attn.c_attn.weight"] = torch.cat([sd[p + f"attn.c_{x}.weight"] for x in "qkv"], 0).t()
            out[h + "attn.c_attn.bias"] = torch.cat([b(p + f"attn.c_{x}.bias", C) for x in "qkv"])
            out[h + "attn.c_proj.weight"] = sd[p + "attn.c_proj.weight"].t()
            out[h + "attn.c_proj.bias"] = b(p + "attn.c_proj.bias", C)
            out[h + "mlp.c_fc.weight"] = sd[p + "mlp.c_fc.weight"].t()
            out[h + "mlp.c_fc.bias"] = b(p + "mlp.c_fc.bias", c.mlp_hidden)
            out[h + "mlp.c_proj.weight"] = sd[p + "mlp.c_proj.weight"].t()
            out[h + "mlp.c_proj.bias"] = b(p + "mlp.c_proj.bias", C)
        out["transformer.ln_f.weight"] = sd["norm_f.weight"]
        out["transformer.ln_f.bias"] = b("norm_f.bias", C)
    else:
        out["model.embed_tokens.weight"] = sd["wte.weight"]
        for i in range(c.n_layer):
            for ours, theirs in _llama_names(i).items():
                if ours.endswith(".weight"):          # norms: a gain only
                    out[theirs] = sd[ours]
                    continue
                out[theirs + ".weight"] = sd[ours + ".weight"]
                if ours + ".bias" in sd:
                    out[theirs + ".bias"] = sd[ours + ".bias"]
        out["model.norm.weight"] = sd["norm_f.weight"]
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def from_hf_state_dict(hf: dict[str, torch.Tensor], c: GPTConfig, where: str) -> dict[str, torch.Tensor]:
    def get(name: str) -> torch.Tensor:
        if name not in hf:
            raise CfError(f"{where}: missing tensor {name!r}")
        return hf[name].float()
    sd: dict[str, torch.Tensor] = {}
    if hf_architecture(c) == "gpt2":
        C = c.n_embd
        sd["wte.weight"], sd["wpe.weight"] = get("transformer.wte.weight"), get("transformer.wpe.weight")
        for i in range(c.n_layer):
            p, h = f"blocks.{i}.", f"transformer.h.{i}."
            for ours, theirs in (("norm_1", "ln_1"), ("norm_2", "ln_2")):
                sd[p + ours + ".weight"], sd[p + ours + ".bias"] = get(h + theirs + ".weight"), get(h + theirs + ".bias")
            w, bias = get(h + "attn.c_attn.weight").t(), get(h + "attn.c_attn.bias")   # (3C, C), (3C,)
            for j, x in enumerate("qkv"):
                sd[p + f"attn.c_{x}.weight"], sd[p + f"attn.c_{x}.bias"] = w[j * C:(j + 1) * C], bias[j * C:(j + 1) * C]
            for name in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                sd[p + name + ".weight"], sd[p + name + ".bias"] = get(h + name + ".weight").t(), get(h + name + ".bias")
        sd["norm_f.weight"], sd["norm_f.bias"] = get("transformer.ln_f.weight"), get("transformer.ln_f.bias")
    else:
        sd["wte.weight"] = get("model.embed_tokens.weight")
        for i in range(c.n_layer):
            for ours, theirs in _llama_names(i).items():
                if ours.endswith(".weight"):
                    sd[ours] = get(theirs)
                else:
                    sd[ours + ".weight"] = get(theirs + ".weight")
                    if c.bias:
                        sd[ours + ".bias"] = get(theirs + ".bias")
        sd["norm_f.weight"] = get("model.norm.weight")
    sd["lm_head.weight"] = sd["wte.weight"] if c.tie_embeddings else get("lm_head.weight")
    return {k: v.contiguous() for k, v in sd.items()}


# ----------------------------------------------------------------------------- folders

def to_hf(model: GPT, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/{model.safetensors, config.json}`` loadable by transformers' from_pretrained."""
    model = getattr(model, "_orig_mod", model)
    out_dir = Path(out_dir)
    tensors = to_hf_state_dict(model)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", hf_config(model.config))
    return out_dir


def config_from_hf(cfg: dict, where: str) -> GPTConfig:
    """Our GPTConfig from a transformers config.json (GPT-2 or Llama families only)."""
    mt = cfg.get("model_type")
    try:
        if mt == "gpt2":
            act = cfg.get("activation_function", "gelu_new")
            if act not in ("gelu_new", "gelu_pytorch_tanh"):
                raise CfError(f"{where}: activation_function {act!r} unsupported; expected gelu_new (tanh GELU)")
            if cfg.get("scale_attn_by_inverse_layer_idx") or cfg.get("reorder_and_upcast_attn"):
                raise CfError(f"{where}: scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn unsupported")
            C = cfg["n_embd"]
            return GPTConfig(vocab_size=cfg["vocab_size"], seq_len=cfg["n_positions"], n_layer=cfg["n_layer"],
                             n_head=cfg["n_head"], n_kv_head=cfg["n_head"], n_embd=C,
                             mlp_hidden=cfg.get("n_inner") or 4 * C, pos="learned", norm="layernorm", mlp="gelu",
                             bias=True, tie_embeddings=cfg.get("tie_word_embeddings", True),
                             norm_eps=cfg.get("layer_norm_epsilon", 1e-5))
        if mt == "llama":
            if cfg.get("hidden_act", "silu") != "silu":
                raise CfError(f"{where}: hidden_act {cfg['hidden_act']!r} unsupported; expected silu")
            rope = cfg.get("rope_parameters") or {}
            scaling = cfg.get("rope_scaling") or {}
            rtype = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
            if rtype != "default":
                raise CfError(f"{where}: rope scaling {rtype!r} unsupported; expected default RoPE")
            C, H = cfg["hidden_size"], cfg["num_attention_heads"]
            if cfg.get("head_dim", C // H) != C // H:
                raise CfError(f"{where}: head_dim {cfg['head_dim']} != hidden_size/num_attention_heads")
            if bool(cfg.get("attention_bias", False)) != bool(cfg.get("mlp_bias", False)):
                raise CfError(f"{where}: attention_bias and mlp_bias must agree (one `bias` field here)")
            return GPTConfig(vocab_size=cfg["vocab_size"], seq_len=cfg.get("max_position_embeddings", 2048),
                             n_layer=cfg["num_hidden_layers"], n_head=H,
                             n_kv_head=cfg.get("num_key_value_heads") or H, n_embd=C,
                             mlp_hidden=cfg["intermediate_size"], pos="rope", norm="rmsnorm", mlp="swiglu",
                             bias=bool(cfg.get("attention_bias", False)),
                             tie_embeddings=cfg.get("tie_word_embeddings", False),
                             rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
                             norm_eps=cfg.get("rms_norm_eps", 1e-6))
    except KeyError as e:
        raise CfError(f"{where}: missing field {e.args[0]!r}") from None
    raise CfError(f"{where}: model_type {mt!r} unsupported; expected 'gpt2' or 'llama'")


def _read_safetensors(src: Path) -> dict[str, torch.Tensor]:
    index = src / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(read_json(index, "safetensors index").get("weight_map", {}).values()))
    elif (src / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        pickles = [p.name for p in src.glob("*.bin")] + [p.name for p in src.glob("*.pt")]
        hint = f" (found {pickles}; pickles are never loaded, convert them to safetensors)" if pickles else ""
        raise CfError(f"{src}: expected model.safetensors or model.safetensors.index.json{hint}")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            sd.update(load_file(str(src / f)))
        except Exception as e:
            raise CfError(f"{src / f}: unreadable safetensors ({str(e).splitlines()[0]})") from None
    return sd


def from_hf(src: str | os.PathLike) -> GPT:
    """Read a transformers GPT-2 or Llama folder (config.json + safetensors) into our GPT (fp32, eval)."""
    src = Path(src)
    config = config_from_hf(read_json(src / "config.json", "HF config"), str(src / "config.json"))
    hf = _read_safetensors(src)
    # some GPT-2 checkpoints (the original upload) lack the "transformer." prefix; add it
    if config.pos == "learned" and "transformer.wte.weight" not in hf and "wte.weight" in hf:
        hf = {("transformer." + k if not k.startswith("lm_head") else k): v for k, v in hf.items()}
    sd = from_hf_state_dict(hf, config, str(src))
    model = GPT(config)
    _load(model, sd, str(src))
    return model.eval()


def _load(model: GPT, sd: dict[str, torch.Tensor], where: str) -> None:
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CfError(f"{where}: weights do not match the config ({' '.join(str(e).split())[:300]})") from None


# ----------------------------------------------------------------------------- llama2.c

def permute_interleaved_to_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q/k projection rows (n_heads*d, in) from interleaved RoPE pairs (2j, 2j+1) to rotate_half pairs
    (j, j + d/2): within each head, rows [r0, i0, r1, i1, ...] become [r0, r1, ..., i0, i1, ...]."""
    out_dim, in_dim = w.shape
    d = out_dim // n_heads
    return w.view(n_heads, d // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def from_llama2c(path: str | os.PathLike) -> GPT:
    """Load a llama2.c "version 0" checkpoint (Karpathy's llama2.c, run.c's format).

    Header: 7 int32 = dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (negative = separate
    classifier), seq_len. Then float32 arrays: token_embedding (V, dim); rms_att (L, dim); wq (L, dim, dim);
    wk, wv (L, n_kv*hd, dim); wo (L, dim, dim); rms_ffn (L, dim); w1 (L, hidden, dim); w2 (L, dim, hidden);
    w3 (L, hidden, dim); rms_final (dim); freq_cis_real, freq_cis_imag (seq_len, hd/2); [wcls (V, dim)].
    Each matrix is stored as its nn.Linear weight (out, in). FFN: w2(silu(w1 x) * w3 x).
    """
    path = Path(path)
    if not path.exists():
        raise CfError(f"{path}: llama2.c checkpoint not found")
    raw = path.read_bytes()
    if len(raw) < 28:
        raise CfError(f"{path}: too short for a llama2.c header (7 int32)")
    if raw[:4] == b"ak42":
        raise CfError(f"{path}: llama2.c version-1+ format (magic ak42) unsupported; expected legacy version 0")
    dim, hidden, L, H, Hkv, vocab, seq_len = struct.unpack("<7i", raw[:28])
    shared = vocab > 0
    V = abs(vocab)
    if min(dim, hidden, L, H, Hkv, V, seq_len) <= 0 or dim % H or H % Hkv:
        raise CfError(f"{path}: implausible llama2.c header {dim, hidden, L, H, Hkv, vocab, seq_len}")
    hd = dim // H
    kv = Hkv * hd
    shapes = [("emb", (V, dim)), ("rms_att", (L, dim)), ("wq", (L, dim, dim)), ("wk", (L, kv, dim)),
              ("wv", (L, kv, dim)), ("wo", (L, dim, dim)), ("rms_ffn", (L, dim)), ("w1", (L, hidden, dim)),
              ("w2", (L, dim, hidden)), ("w3", (L, hidden, dim)), ("rms_final", (dim,)),
              ("freq_real", (seq_len, hd // 2)), ("freq_imag", (seq_len, hd // 2))]
    if not shared:
        shapes.append(("wcls", (V, dim)))
    need = sum(int(np.prod(s)) for _, s in shapes)
    data = np.frombuffer(raw, dtype="<f4", offset=28)
    if data.size != need:
        raise CfError(f"{path}: {data.size} float32 values after the header, expected {need} for "
                      f"dim={dim} hidden={hidden} layers={L} heads={H}/{Hkv} vocab={vocab} seq_len={seq_len}")
    t: dict[str, torch.Tensor] = {}
    off = 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        t[name] = torch.from_numpy(data[off:off + n].copy()).view(shape)
        off += n
    config = GPTConfig(vocab_size=V, seq_len=seq_len, n_layer=L, n_head=H, n_kv_head=Hkv, n_embd=dim,
                       mlp_hidden=hidden, pos="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                       tie_embeddings=shared, rope_theta=10000.0, norm_eps=1e-5)
    model = GPT(config)
    # the stored RoPE tables must be ours (theta 10000): cos of the first half of our (T, hd) table
    if not torch.allclose(t["freq_real"], model.rope_cos[:, :hd // 2], atol=1e-3):
        raise CfError(f"{path}: RoPE tables do not match theta=10000")
    sd = {"wte.weight": t["emb"], "norm_f.weight": t["rms_final"],
          "lm_head.weight": t["emb"] if shared else t["wcls"]}
    for i in range(L):
        p = f"blocks.{i}."
        sd[p + "norm_1.weight"], sd[p + "norm_2.weight"] = t["rms_att"][i], t["rms_ffn"][i]
        sd[p + "attn.c_q.weight"] = permute_interleaved_to_half(t["wq"][i], H)
        sd[p + "attn.c_k.weight"] = permute_interleaved_to_half(t["wk"][i], Hkv)
        sd[p + "attn.c_v.weight"], sd[p + "attn.c_proj.weight"] = t["wv"][i], t["wo"][i]
        sd[p + "mlp.c_gate.weight"], sd[p + "mlp.c_fc.weight"] = t["w1"][i], t["w3"][i]
        sd[p + "mlp.c_proj.weight"] = t["w2"][i]
    _load(model, {k: v.contiguous() for k, v in sd.items()}, str(path))
    return model.eval()


# ----------------------------------------------------------------------------- CLI

def cli(argv: list[str]) -> None:
    ap = make_parser("chatforge import", "import weights (HF transformers folder or llama2.c .bin) as a "
                                         "chatforge checkpoint")
    ap.add_argument("src", help="HF folder (config.json + model.safetensors) or llama2.c .bin file")
    ap.add_argument("--format", choices=["hf", "llama2c"], default="hf", help="source format")
    ap.add_argument("--out", required=True, help="stage folder to write, e.g. runs/<name>/base")
    ap.add_argument("--step", type=int, default=0, help="step number of the written checkpoint")
    ap.add_argument("--force", action="store_true",
                    help="write into a non-empty --out (only the step folder written is replaced)")
    args = ap.parse_args(argv)
    check_out_dir(args.out, args.force)
    model = from_hf(args.src) if args.format == "hf" else from_llama2c(args.src)
    # the source's tokenizer is not converted: the checkpoint has no tokenizer/ folder (pass one to
    # load_checkpoint(..., tokenizer=...) or copy a chatforge tokenizer folder beside model.safetensors)
    path = save_checkpoint(args.out, args.step, model, None,
                           {"imported_from": str(Path(args.src).resolve()), "format": args.format})
    print0(f"imported {args.format} {args.src}: {model.num_params():,} parameters -> {path}")
