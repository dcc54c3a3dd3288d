"""Reduced-precision weights for inference (decode reads every weight once per token).

Decoding one token at batch 1 is a chain of matrix-vector products: the time goes into reading the
weights from memory, not into arithmetic. Storing the Linear weights in fewer bits cuts the bytes
read per token (fp32 4, bf16/fp16 2, int8 1 per weight), so on a memory-bound CPU it cuts the time
too, at a small accuracy cost. Training never uses this: ``quantize_for_inference`` returns a copy
for sampling only (its weights cannot be trained or saved as a checkpoint).

Kinds (``--weights``)::

    fp32   the model unchanged (the reference)
    bf16   weights and activations of every Linear rounded to bfloat16 (8-bit mantissa); the
    fp16   matmul accumulates in fp32 (PyTorch's CPU half kernels accumulate in float), the output is
           returned as fp32, so norms, softmax, RoPE and the KV cache stay fp32
    int8   weight-only int8: per output channel (row) symmetric scale s = max|w_row| / 127,
           w ~ s * round(w / s); the activation stays fp32 and the product is
           ``torch._weight_int8pack_mm(x, w_int8, s)`` (int8 weights upcast inside the kernel, float
           accumulation): the weight path of LLM.int8() (Dettmers et al. 2022, arXiv:2208.07339) and
           of llama.cpp's Q8_0 without its 32-wide blocks (Q8_0 also rounds the activations)

Speed depends on the CPU's kernels, not on the bytes alone. Measured at batch 1 on the d8 shape on
the 2-core AVX2 EPYC (bench/generate.py --section quant, dev/LOG.md): bf16 1.8x and fp16 1.9x the
fp32 decode rate, int8 0.4x - ``_weight_int8pack_mm`` has no AVX2 fast path (fbgemm's dynamic int8
``quantized.linear_dynamic`` was also slower than fp32 for the whole model, and it rounds the
activations to 7 bits: 6% max logit error, so it is not used). int8 may pay where the kernel
has a fast path (AVX-512/AMX CPUs; not measured here) and always saves memory.

The token embedding stays fp32 (a lookup reads one row, not the matrix); a tied lm_head gets its own
reduced copy. The slow twin of each kind is ``dequantized(...)``: the same rounded weights back in
fp32 through the model's own nn.Linear, which the parity test compares against.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from chatforge.common import CfError

KINDS = ("fp32", "bf16", "fp16", "int8")
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: w (N, K) float -> (q (N, K) int8, scales (N,) float32), w ~ q * s[:, None]."""
    s = w.float().abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w.float() / s[:, None]).clamp(-127, 127).to(torch.int8)
    return q, s


class LowPrecisionLinear(nn.Module):
    """An inference-only nn.Linear whose weight is stored in bf16, fp16 or int8 (see module doc).
    Input (..., K) of any float dtype -> output (..., N) in the input's dtype."""

    def __init__(self, linear: nn.Linear, kind: str):
        super().__init__()
        w = linear.weight.detach()
        self.kind, self.in_features, self.out_features = kind, linear.in_features, linear.out_features
        if kind == "int8":
            q, s = int8_rows(w)
            self.register_buffer("weight", q)              # (N, K) int8
            self.register_buffer("scales", s)              # (N,) fp32
        else:
            self.register_buffer("weight", w.to(_HALF[kind]))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])                                           # (M, K)
        if self.kind == "int8":
            y = torch._weight_int8pack_mm(x2.float().contiguous(), self.weight, self.scales)
        else:
            y = F.linear(x2.to(self.weight.dtype), self.weight).float()
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight this module multiplies by, in fp32 (N, K)."""
        if self.kind == "int8":
            return self.weight.float() * self.scales[:, None]
        return self.weight.float()

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, weights={self.kind}"


def _linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, Linear) for every nn.Linear of the model, in module order."""
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if isinstance(child, nn.Linear)]


def quantize_for_inference(model: nn.Module, kind: str) -> nn.Module:
    """A copy of ``model`` (eval mode) whose Linear layers store their weights as ``kind`` (one of
    KINDS; "fp32" returns the model itself). The copy is for sampling only."""
    if kind not in KINDS:
        raise CfError(f"--weights: expected one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "fp32":
        return model
    if next(model.parameters()).device.type != "cpu" and kind == "int8":
        raise CfError("--weights int8: the int8 kernel runs on the CPU only (use bf16 on a GPU)")
    out = copy.deepcopy(model).eval()      # a tied wte keeps its fp32 matrix: only the lm_head module is replaced
    for parent, name, lin in _linears(out):
        setattr(parent, name, LowPrecisionLinear(lin, kind))
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def dequantized(model: nn.Module, kind: str) -> nn.Module:
    """The slow twin: a copy of ``model`` whose Linear weights are the rounded ``kind`` weights back in
    fp32, run by plain nn.Linear (the activations are not rounded)."""
    if kind == "fp32":
        return model
    out = copy.deepcopy(model).eval()
    for parent, name, lin in _linears(out):
        w = LowPrecisionLinear(lin, kind).dequantized_weight()
        new = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
        new.weight = nn.Parameter(w, requires_grad=False)
        new.bias = lin.bias
        setattr(parent, name, new)    # a new module: a tied wte keeps its own fp32 matrix
    return out
