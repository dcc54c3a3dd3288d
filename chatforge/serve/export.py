"""``chatforge export``: a checkpoint as a GGUF file (llama.cpp, LM Studio, Ollama) or a transformers folder.

GGUF (the ``gguf`` package's GGUFWriter, format spec: ggml/docs/gguf.md):

* architecture "llama" for RoPE/RMSNorm/SwiGLU models, "gpt2" for learned-position/LayerNorm/GELU
  models (the same split as ``hf.hf_architecture``; anything else has no llama.cpp twin and fails).
* llama.cpp rotates interleaved pairs (2j, 2j+1) like Meta's checkpoints, while we (and HF) use
  rotate_half pairs (j, j + d/2). So the Q and K rows are permuted per head exactly like
  convert_hf_to_gguf.py's ``LlamaModel.permute``; ``hf.permute_interleaved_to_half`` is its inverse
  (the test checks the round trip gives back our weights).
* tensor names follow llama.cpp's (token_embd, blk.N.attn_q, ..., output_norm, output); GPT-2 fuses
  q|k|v into blk.N.attn_qkv and always has biases (zeros when we have none).
* the tokenizer is stored as a byte-level BPE: tokenizer.ggml.model "gpt2", tokens and merges in the
  GPT-2 byte-to-unicode alphabet (taken from the tokenizer module's HF export, so there is one
  conversion), token types (normal / control for our specials / unused for padding rows), bos/eos ids,
  tokenizer.ggml.pre "llama-bpe" (our split regex is Llama 3's) and the chat template (Jinja).

HF: ``hf.to_hf`` (model.safetensors + config.json), tokenizer.json from ``tokenizer.export_hf_tokenizer``,
tokenizer_config.json with a Jinja chat template that reproduces ``render_for_completion`` and
generation_config.json with our stop tokens.

Special-token spellings in user text: chatforge encodes message text as text, but chat templates (HF's
and llama.cpp's alike) render a string that is re-tokenized with specials parsed, so a user message
spelling ``<|assistant_end|>`` becomes that control token there. A string template cannot express
"this part is text" (HF's split_special_tokens would also split the template's own tokens).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from chatforge.common import (add_config_args, atomic_path, atomic_write_json, CfError, check_out_dir,
                              config_from_args, make_parser, print0, print_config, write_meta)
from chatforge.model.checkpoint import load_checkpoint
from chatforge.model.hf import hf_architecture, to_hf
from chatforge.tokenizer.tokenizer import export_hf_tokenizer




# Our chat format as Jinja (HF apply_chat_template / llama.cpp / LM Studio). Mirrors the rendering in
# DESIGN.md: <|bos|>, optional system block, user/assistant turns, and <|assistant_start|> to prompt.
CHAT_TEMPLATE = (
    "{{- '<|bos|>' -}}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set text = message['content'] | map(attribute='text') | join('') -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{- '<|system_start|>' + text + '<|system_end|>' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '<|user_start|>' + text + '<|user_end|>' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- '<|assistant_start|>' + text + '<|assistant_end|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant_start|>' -}}{%- endif -%}"
)

# GGUF token types (llama.cpp's llama_token_type)
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5


# ----------------------------------------------------------------------------- Q/K permutation

def permute_half_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q/k rows (n_heads*d, ...) from rotate_half pairs (j, j + d/2) to llama.cpp's interleaved pairs
    (2j, 2j+1): within each head rows [r0, r1, ..., i0, i1, ...] become [r0, i0, r1, i1, ...].
    The same reshape as convert_hf_to_gguf.py's LlamaModel.permute; works on weights and biases."""
    out_dim = w.shape[0]
    d = out_dim // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------- tokenizer pieces

def hf_tokenizer_json(tok: Any) -> dict:
    """The HF tokenizer.json dict of our tokenizer (via the tokenizer module's one exporter)."""
    with tempfile.TemporaryDirectory() as d:
        export_hf_tokenizer(tok, Path(d) / "tokenizer.json")
        return json.loads((Path(d) / "tokenizer.json").read_text(encoding="utf-8"))


def gguf_vocab(tok: Any, vocab_size: int) -> tuple[list[str], list[str], list[int]]:
    """(tokens, merges, token types) in id order, padded with unused tokens up to the model's vocab."""
    tj = hf_tokenizer_json(tok)
    vocab: dict[str, int] = dict(tj["model"]["vocab"])
    types: dict[int, int] = {i: TOKEN_NORMAL for i in vocab.values()}
    for at in tj.get("added_tokens", []):
        vocab[at["content"]] = at["id"]
        types[at["id"]] = TOKEN_CONTROL if at.get("special", True) else TOKEN_NORMAL
    by_id = {i: t for t, i in vocab.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise CfError("tokenizer: HF export ids are not contiguous 0..n-1")
    if len(by_id) > vocab_size:
        raise CfError(f"tokenizer: {len(by_id)} tokens but the model has vocab_size {vocab_size}")
    tokens = [by_id[i] for i in range(len(by_id))] + [f"[PAD{i}]" for i in range(len(by_id), vocab_size)]
    ttypes = [types[i] for i in range(len(by_id))] + [TOKEN_UNUSED] * (vocab_size - len(by_id))
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    return tokens, merges, ttypes


# ----------------------------------------------------------------------------- GGUF

def gguf_tensors(model: Any, arch: str) -> dict[str, torch.Tensor]:
    """llama.cpp tensor names -> tensors (float32, our nn.Linear (out, in) layout = ggml's row order)."""
    c = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {"token_embd.weight": sd["wte.weight"]}

    def bias(name: str, n: int) -> torch.Tensor:
        return sd.get(name, torch.zeros(n))
    for i in range(c.n_layer):
        p, g = f"blocks.{i}.", f"blk.{i}."
        if arch == "llama":
            out[g + "attn_norm.weight"] = sd[p + "norm_1.weight"]
            for ours, theirs, heads in (("c_q", "attn_q", c.n_head), ("c_k", "attn_k", c.n_kv_head),
                                        ("c_v", "attn_v", None), ("c_proj", "attn_output", None)):
                for kind in ("weight", "bias"):
                    t = sd.get(p + f"attn.{ours}.{kind}")
                    if t is not None:
                        out[g + f"{theirs}.{kind}"] = permute_half_to_interleaved(t, heads) if heads else t
            out[g + "ffn_norm.weight"] = sd[p + "norm_2.weight"]
            for ours, theirs in (("c_gate", "ffn_gate"), ("c_fc", "ffn_up"), ("c_proj", "ffn_down")):
                for kind in ("weight", "bias"):
                    t = sd.get(p + f"mlp.{ours}.{kind}")
                    if t is not None:
                        out[g + f"{theirs}.{kind}"] = t
        else:  # gpt2
            C = c.n_embd
            out[g + "attn_norm.weight"], out[g + "attn_norm.bias"] = sd[p + "norm_1.weight"], bias(p + "norm_1.bias", C)
            out[g + "attn_qkv.weight"] = torch.cat([sd[p + f"attn.c_{x}.weight"] for x in "qkv"], 0)   # (3C, C)
            out[g + "attn_qkv.bias"] = torch.cat([bias(p + f"attn.c_{x}.bias", C) for x in "qkv"])
            out[g + "attn_output.weight"], out[g + "attn_output.bias"] = sd[p + "attn.c_proj.weight"], bias(p + "attn.c_proj.bias", C)
            out[g + "ffn_norm.weight"], out[g + "ffn_norm.bias"] = sd[p + "norm_2.weight"], bias(p + "norm_2.bias", C)
            out[g + "ffn_up.weight"], out[g + "ffn_up.bias"] = sd[p + "mlp.c_fc.weight"], bias(p + "mlp.c_fc.bias", c.mlp_hidden)
            out[g + "ffn_down.weight"], out[g + "ffn_down.bias"] = sd[p + "mlp.c_proj.weight"], bias(p + "mlp.c_proj.bias", C)
    if arch == "gpt2":
        out["position_embd.weight"] = sd["wpe.weight"]
        out["output_norm.bias"] = bias("norm_f.bias", c.n_embd)
    out["output_norm.weight"] = sd["norm_f.weight"]
    if not c.tie_embeddings:       # tied: llama.cpp reuses token_embd for the output
        out["output.weight"] = sd["lm_head.weight"]
    return out


def gguf_array(a: np.ndarray, dtype: str) -> tuple[np.ndarray, Any]:
    """(data, raw_dtype for GGUFWriter.add_tensor) of one float32 tensor stored as ``dtype``.
    Matrices are converted; vectors (norms, biases) stay f32 as in llama.cpp. Q8_0 (blocks of 32
    weights sharing one f16 scale: ggml-quants.c quantize_row_q8_0, the gguf package's numpy twin)
    needs rows that are a multiple of 32; other rows fall back to f16, as llama.cpp's converter does."""
    if a.ndim < 2 or dtype == "f32":
        return a, None
    if dtype == "q8_0" and a.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return a.astype(np.float16), None


GGUF_DTYPES = ("f32", "f16", "q8_0", "q4_k")
# ggml file types recorded in general.file_type (llama.h llama_ftype)
GGUF_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}
LLAMA_FTYPE_MOSTLY_Q4_K_M = 15


def write_gguf(model: Any, tok: Any, path: str | Path, name: str = "chatforge", dtype: str = "f32") -> Path:
    """Write one .gguf file (atomically) with the model, its hyperparameters and the tokenizer.
    q4_k: an f16 file requantized by llama.cpp's own quantizer (Q4_K_M), which the gguf package lacks."""
    c = model.config
    arch = hf_architecture(c)      # raises CfError for configs with no llama.cpp twin
    if dtype not in GGUF_DTYPES:
        raise CfError(f"--dtype: expected one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    if dtype == "q4_k":
        return _requantize_q4_k(model, tok, Path(path), name)
    tokens, merges, ttypes = gguf_vocab(tok, c.vocab_size)
    path = Path(path)
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_name(name)
        w.add_context_length(c.seq_len)
        w.add_embedding_length(c.n_embd)
        w.add_block_count(c.n_layer)
        w.add_feed_forward_length(c.mlp_hidden)
        w.add_head_count(c.n_head)
        w.add_head_count_kv(c.n_kv_head)
        if arch == "llama":
            w.add_rope_freq_base(c.rope_theta)
            w.add_rope_dimension_count(c.head_dim)
            w.add_layer_norm_rms_eps(c.norm_eps)
            w.add_vocab_size(c.vocab_size)
        else:
            w.add_layer_norm_eps(c.norm_eps)
        w.add_file_type(getattr(gguf.LlamaFileType, GGUF_FILE_TYPES[dtype]))
        # tokenizer: byte-level BPE with Llama 3's pre-tokenizer regex
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("llama-bpe")
        w.add_token_list(tokens)
        w.add_token_types(ttypes)
        w.add_token_merges(merges)
        w.add_bos_token_id(tok.bos_id)
        # llama.cpp stops on its end-of-generation set: EOS, EOT and EOM ids join it (llama-vocab.cpp),
        # so chatforge's two stops (Engine.default_stop_tokens) are EOS/EOT = <|assistant_end|> and
        # EOM = <|bos|>, the document separator. It still logs "special_eos_id is not in
        # special_eog_ids" because it first looks for hard-coded spellings (<|eot_id|>, <|im_end|>...).
        w.add_eos_token_id(tok.special("<|assistant_end|>"))
        w.add_eot_token_id(tok.special("<|assistant_end|>"))
        w.add_eom_token_id(tok.bos_id)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_chat_template(CHAT_TEMPLATE)
        for tname, t in gguf_tensors(model, arch).items():
            a, raw_dtype = gguf_array(np.ascontiguousarray(t.numpy()), dtype)
            w.add_tensor(tname, a, raw_dtype=raw_dtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def _requantize_q4_k(model: Any, tok: Any, path: Path, name: str) -> Path:
    """Q4_K_M through llama.cpp's quantizer (llama_model_quantize in the llama-cpp-python wheel):
    k-quant super-blocks of 256 weights; tensors whose rows are not a multiple of 256 get llama.cpp's
    own fallback type. The f16 source is a temporary file beside ``path``."""
    try:
        import llama_cpp  # lazy: a heavy optional dependency, loaded only for --dtype q4_k
    except ImportError:
        raise CfError("--dtype q4_k: needs llama-cpp-python (llama.cpp's quantizer; the gguf package has no "
                      "Q4_K quantizer); install it or use --dtype q8_0") from None
    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as d:
        src = write_gguf(model, tok, Path(d) / "f16.gguf", name=name, dtype="f16")
        with atomic_path(path) as tmp:
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = LLAMA_FTYPE_MOSTLY_Q4_K_M
            params.nthread = 1
            if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
                raise CfError(f"{path}: llama.cpp could not quantize the model to Q4_K_M")
    return path


# ----------------------------------------------------------------------------- transformers folder

def write_hf(model: Any, tok: Any, out_dir: str | Path) -> Path:
    """A transformers folder: weights + config (hf.to_hf), tokenizer.json, tokenizer_config.json
    (with the chat template), generation_config.json. Built in a temp folder, renamed into place."""
    out_dir = Path(out_dir)
    bos, eos = tok.bos_id, tok.special("<|assistant_end|>")
    with atomic_path(out_dir) as tmp:
        to_hf(model, tmp)
        export_hf_tokenizer(tok, tmp / "tokenizer.json")
        atomic_write_json(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|assistant_end|>",
            "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
            "model_max_length": model.config.seq_len, "chat_template": CHAT_TEMPLATE})
        atomic_write_json(tmp / "special_tokens_map.json", {
            "bos_token": "<|bos|>", "eos_token": "<|assistant_end|>"})
        atomic_write_json(tmp / "generation_config.json", {
            # no pad token: padding with <|bos|> would make generate() mask out the real <|bos|>
            "bos_token_id": bos, "eos_token_id": [eos, bos],
            "max_length": model.config.seq_len, "do_sample": True, "temperature": 0.7, "top_k": 50})
    return out_dir


# ----------------------------------------------------------------------------- CLI

@dataclass
class ExportConfig:
    format: str = field(default="gguf", metadata={"help": "output format", "choices": ["gguf", "hf"]})
    ckpt: str = field(default="", metadata={"help": "checkpoint: a step folder or a stage folder (latest step)"})
    out: str = field(default="", metadata={"help": "output folder"})
    dtype: str = field(default="f32", metadata={
        "help": "GGUF weight type (q8_0: the gguf package's quantizer; q4_k: llama.cpp's, Q4_K_M, needs "
                "llama-cpp-python)", "choices": list(GGUF_DTYPES)})
    name: str = field(default="", metadata={"help": "model name stored in the GGUF (default: from the path)"})
    force: bool = field(default=False, metadata={
        "help": "write into a non-empty --out (only the files the export writes are replaced)"})


def export(cfg: ExportConfig) -> Path:
    if not cfg.ckpt or not cfg.out:
        raise CfError("export: --ckpt and --out are required")
    if cfg.format not in ("gguf", "hf"):
        raise CfError(f"--format: expected gguf or hf, got {cfg.format!r}")
    out = check_out_dir(cfg.out, cfg.force)
    ck = load_checkpoint(cfg.ckpt)
    stage = ck.path.parent.name
    name = cfg.name or f"chatforge-{ck.path.parent.parent.name}-{stage}"
    if cfg.format == "gguf":
        path = write_gguf(ck.model, ck.tokenizer, out / f"{name}.gguf", name=name, dtype=cfg.dtype)
    else:
        path = write_hf(ck.model, ck.tokenizer, out)
    write_meta(out / f"export_{cfg.format}.json", f"export-{cfg.format}", cfg, source=str(ck.path),
               step=ck.step, output=str(path))
    print0(f"export: wrote {path}")
    return path


def cli(argv: list[str]) -> None:
    parser = make_parser("chatforge export", "export a checkpoint to GGUF (llama.cpp, LM Studio, Ollama) or HF")
    add_config_args(parser, ExportConfig)
    cfg = config_from_args(ExportConfig, parser.parse_args(argv))
    print_config(cfg, "export config")
    export(cfg)
