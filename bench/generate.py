"""Decode speed, four sections (--section decode|batched|quant|sampling|all).

    .venv/bin/python bench/generate.py [--section decode] [--depth 8] [--new 256] [--runs 3] [--device cpu]
    .venv/bin/python bench/generate.py --section batched [--run runs/speedrun] [--n-prompts 64]

decode: our KV-cache Engine vs the no-cache twin vs transformers' generate(), same weights. A random-init
d<depth> Llama-flavour model is exported with hf.to_hf and loaded as LlamaForCausalLM, so all three
decode the very same weights greedily from the same prompt. Reports the median of --runs timings each
(new tokens per second) and ratios against transformers measured in this run, plus how many greedy
tokens agree (random weights give near-tied logits, so late divergence from fp32 reordering is
possible and harmless).

batched: evaluation throughput, Engine.generate_many (all prompts in one continuous batch) vs the
sequential loop (Engine.generate_batch per prompt, what evaluation did before), greedy, identical
outputs asserted. With --run: the run's SFT checkpoint with its toolbox on the run's held-out eval
questions (the speedrun's evaluation workload: knowledge questions, math with the calculator, letter
counting with python). Without: a random-init d4 model (vocab 4096, seq 256: the speedrun's shape) on
random prompts of 20..80 tokens, every reply running to --max-new (no tools, no stops).

sampling: one sampling step of a batched decode, the inverse-CDF sampler (engine.sample_categorical)
vs its twin torch.multinomial, on --sample-rows x --vocab probabilities; both token frequencies must
be as far from the probabilities as sampling noise (multinomial's distance is that floor).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from chatforge.assistant.tools import default_tools                # noqa: E402
from chatforge.model.checkpoint import load_checkpoint             # noqa: E402
from chatforge.model.engine import Engine, naive_generate, sample_categorical  # noqa: E402
from chatforge.model.gpt import GPT, config_from_depth             # noqa: E402
from chatforge.model.hf import to_hf                               # noqa: E402
from chatforge.model.quant import KINDS, quantize_for_inference    # noqa: E402
from chatforge.serve.export import write_gguf                      # noqa: E402
from chatforge.tokenizer.tokenizer import train_tokenizer          # noqa: E402
from chatforge.world.build import load_world                       # noqa: E402


def timed(fns: dict, runs: int, naive_runs: int) -> dict[str, tuple[float, list[int]]]:
    """Median seconds and the output of each contender; runs are interleaved (a, b, c, a, b, c, ...)
    so load from other processes on a busy machine hits all contenders alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, list[int]] = {}
    for r in range(runs):
        for name, fn in fns.items():
            if name == "naive twin (no cache)" and r >= naive_runs:
                continue
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs[name] = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), outs[k]) for k, v in times.items()}


def agree(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def decode_section(args) -> None:
    import transformers

    torch.manual_seed(0)
    cfg = config_from_depth(args.depth, args.vocab, 512)
    model = GPT(cfg)
    model.init_weights()
    model.to(args.device).eval()
    with tempfile.TemporaryDirectory() as d:
        to_hf(model, Path(d) / "hf")
        hf = transformers.LlamaForCausalLM.from_pretrained(Path(d) / "hf", dtype=torch.float32).to(args.device).eval()
    prompt = torch.randint(0, args.vocab, (args.prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    N = args.new
    print(f"d{args.depth}: {model.num_params() / 1e6:.1f}M params, prompt {args.prompt_len}, {N} new tokens, "
          f"device {args.device}, torch threads {torch.get_num_threads()}, median of {args.runs}")

    engine = Engine(model)

    def ours():
        seqs, _ = engine.generate_batch(prompt, max_new_tokens=N, temperature=0.0, stop_tokens=[])
        return seqs[0]

    def theirs():
        x = torch.tensor([prompt], device=args.device)
        with torch.inference_mode():
            y = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=N, min_new_tokens=N,
                            do_sample=False, use_cache=True, pad_token_id=0)
        return y[0, len(prompt):].tolist()

    def naive():
        return naive_generate(model, prompt, N)

    ours(), theirs()                                         # warm-up
    fns = {"engine (KV cache)": ours, "transformers generate": theirs, "naive twin (no cache)": naive}
    res = timed(fns, args.runs, args.naive_runs or args.runs)
    t_hf = res["transformers generate"][0]
    for name, (t, _) in res.items():
        print(f"{name:<24} {t:7.2f} s  {N / t:8.1f} tok/s  {t_hf / t:5.2f}x transformers")
    tok = {k: v[1] for k, v in res.items()}
    print(f"greedy agreement: engine==naive for {agree(tok['engine (KV cache)'], tok['naive twin (no cache)'])}/{N} "
          f"tokens, engine==transformers for {agree(tok['engine (KV cache)'], tok['transformers generate'])}/{N}")



def eval_workload(args):
    """(engine, prompts, stop tokens, max_new_tokens per prompt, description) of the batched section."""
    if args.run:
        rd = Path(args.run)
        ck = load_checkpoint(rd / "sft", device=args.device)
        tok = ck.tokenizer
        ev = json.loads((rd / "sft_data" / "eval.json").read_text())
        qs = [it["question"] for it in ev["known"] + ev["unknown"]]
        qs += [p["question"] + " Use the calculator." for p in ev["problems"]]
        qs += [t["question"] + (" Use python." if t["kind"] == "count_letter" else "") for t in ev["letters"]]
        qs = qs[::max(1, len(qs) // args.n_prompts)][:args.n_prompts]    # an even spread of the kinds
        prompts = [tok.render_for_completion({"messages": [{"role": "user", "content": q}]}) for q in qs]
        engine = Engine(ck.model, tok, tools=default_tools(load_world(rd)))
        return engine, prompts, None, f"{rd / 'sft'} with tools, {len(prompts)} eval questions"
    torch.manual_seed(0)
    model = GPT(config_from_depth(4, 4096, 256))
    model.init_weights()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 4096, (int(n),), generator=g).tolist()
               for n in torch.randint(20, 81, (args.n_prompts,), generator=g)]
    what = f"random-init d4 (no --run), {len(prompts)} random prompts"
    return Engine(model.to(args.device).eval()), prompts, [], what


def batched_section(args) -> None:
    engine, prompts, stops, what = eval_workload(args)
    N = args.max_new
    print(f"\nbatched evaluation: {what}, greedy, max {N} new tokens, torch threads {torch.get_num_threads()}, "
          f"median of {args.runs}")

    def sequential():
        return [engine.generate_batch(p, max_new_tokens=N, temperature=0.0, stop_tokens=stops)[0][0] for p in prompts]

    fns = {"sequential (generate_batch per prompt)": sequential}
    for mb in args.max_batch:
        fns[f"generate_many, max_batch {mb}"] = (lambda mb=mb: engine.generate_many(prompts, N, stop_tokens=stops,
                                                                                     max_batch=mb))
    res = timed(fns, args.runs, args.runs)
    t_seq, ref = res["sequential (generate_batch per prompt)"]
    n_tok = sum(map(len, ref))
    called = sum(engine.ids["output_start"] in s for s in ref) if engine.ids["output_start"] is not None else 0
    print(f"{n_tok} new tokens in all ({n_tok / len(prompts):.1f} per reply, {called} replies used a tool)")
    for name, (t, out) in res.items():
        assert out == ref, f"{name}: outputs differ from the sequential loop"
        print(f"{name:<40} {t:7.2f} s  {n_tok / t:8.1f} tok/s  {t_seq / t:5.2f}x sequential")
    print("outputs identical to the sequential loop: yes")


def llama_cpp_models(model, d: Path) -> dict[str, Path]:
    """The model exported as GGUF F16 (chatforge's exporter) and Q8_0 (llama.cpp's own quantizer)."""
    import ctypes

    import llama_cpp
    tok = train_tokenizer(["a tiny text for the GGUF vocabulary, nothing more. " * 20], 300)
    f16 = write_gguf(model, tok, d / "m-f16.gguf", dtype="f16")
    q8 = d / "m-q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(q8).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError("llama.cpp could not quantize the model to Q8_0")
    return {"llama.cpp F16": f16, "llama.cpp Q8_0": q8}


def quant_section(args) -> None:
    """Batch-1 greedy decode with reduced-precision weights vs llama.cpp F16/Q8_0 on the same model,
    plus the accuracy cost: greedy agreement with fp32 and the max logit error (teacher-forced on the
    fp32 greedy sequence) relative to the largest fp32 logit."""
    try:
        import llama_cpp
    except ImportError:
        print("\nquant: llama-cpp-python is not installed (pip install --no-deps "
              "../shared/wheels/llama_cpp_python-*.whl) - comparing our weight kinds only")
        llama_cpp = None
    torch.manual_seed(0)
    model = GPT(config_from_depth(args.depth, args.vocab, 512))
    model.init_weights()
    model.eval()
    prompt = torch.randint(0, args.vocab, (args.prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    N = args.new
    threads = torch.get_num_threads()
    print(f"\nreduced-precision decode: d{args.depth} ({model.num_params() / 1e6:.1f}M params, vocab {args.vocab}), "
          f"batch 1, prompt {args.prompt_len}, {N} greedy tokens, {threads} threads, median of {args.runs}")
    models = {kind: quantize_for_inference(model, kind) for kind in args.weights}
    fns = {}
    for kind, m in models.items():
        eng = Engine(m)
        fns[f"chatforge {kind}"] = (lambda eng=eng: eng.generate_batch(prompt, max_new_tokens=N, temperature=0.0,
                                                                        stop_tokens=[])[0][0])
    tmp = tempfile.TemporaryDirectory()
    llms = {}
    if llama_cpp is not None:
        for name, path in llama_cpp_models(model, Path(tmp.name)).items():
            llms[name] = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_batch=512,
                                         logits_all=True, verbose=False)

            def run(llm=llms[name]):
                llm.reset()
                llm.eval(prompt)
                out = []
                for _ in range(N):
                    out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                    llm.eval([out[-1]])
                return out
            fns[name] = run
    for fn in fns.values():
        fn()                                                  # warm-up
    res = timed(fns, args.runs, args.runs)
    ref_name = "llama.cpp F16" if "llama.cpp F16" in res else "chatforge fp32"
    t_ref = res[ref_name][0]
    seq = prompt + res["chatforge fp32"][1] if "chatforge fp32" in res else None
    with torch.inference_mode():
        ref_logits = model(torch.tensor([seq]))[0] if seq else None                        # (T, V)
    scale = float(ref_logits.abs().max()) if seq else 1.0
    print(f"{'':<18} {'s':>7} {'tok/s':>8}  {'vs ' + ref_name:>17}  greedy agree  max|dlogit|/max|logit|")
    for name, (t, out) in res.items():
        err = float("nan")
        if seq:
            if name.startswith("chatforge"):
                with torch.inference_mode():
                    logits = models[name.split()[1]](torch.tensor([seq]))[0]
            else:
                llms[name].reset()
                llms[name].eval(seq)
                logits = torch.from_numpy(np.array(llms[name].scores[:len(seq)]))
            err = float((logits - ref_logits).abs().max()) / scale
        agree_n = agree(out, res["chatforge fp32"][1]) if "chatforge fp32" in res else 0
        print(f"{name:<18} {t:7.2f} {N / t:8.1f}  {t_ref / t:16.2f}x  {agree_n:>5}/{N:<6}  {err:.2e}")
    tmp.cleanup()


def sampling_section(args) -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(args.sample_rows, args.vocab, generator=g), dim=-1)   # (B, V)
    fns = {"torch.multinomial": lambda: torch.multinomial(probs, 1, generator=g).squeeze(-1),
           "inverse CDF": lambda: sample_categorical(probs, torch.rand(len(probs), 1, generator=g))}
    med = {}
    for name, fn in fns.items():
        times = []
        for _ in range(max(3, args.runs)):
            t0 = time.perf_counter()
            for _ in range(50):
                fn()
            times.append((time.perf_counter() - t0) / 50)
        med[name] = statistics.median(times)
    expected = probs.mean(0)                                          # (V,) each draw's token distribution
    tv = {}
    for n, fn in fns.items():  # total variation to the truth; multinomial's value is the noise floor
        f = torch.bincount(torch.cat([fn() for _ in range(200)]), minlength=args.vocab).float()
        tv[n] = 0.5 * (f / f.sum() - expected).abs().sum().item()
    print(f"\nsampling one token for {args.sample_rows} rows x {args.vocab} vocab (median of {max(3, args.runs)})")
    for name, t in med.items():
        print(f"{name:<18} {1e3 * t:8.3f} ms  {med['torch.multinomial'] / t:6.1f}x multinomial")
    print("total variation of the token frequencies from the probabilities: "
          + ", ".join(f"{n} {v:.3f}" for n, v in tv.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", default="all", choices=["decode", "batched", "quant", "sampling", "all"])
    ap.add_argument("--sample-rows", type=int, default=256, help="sampling: rows sampled together")
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--naive-runs", type=int, default=None, help="runs for the slow twin (default --runs)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--run", default=None, help="batched: a speedrun run folder (sft/, sft_data/eval.json, world/)")
    ap.add_argument("--n-prompts", type=int, default=64, help="batched: number of prompts")
    ap.add_argument("--max-new", type=int, default=64, help="batched: max new tokens per reply")
    ap.add_argument("--max-batch", type=int, nargs="+", default=[32], help="batched: rows in flight (several: compare)")
    ap.add_argument("--weights", nargs="+", default=list(KINDS), help="quant: weight kinds to compare")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.section in ("decode", "all"):
        decode_section(args)
    if args.section in ("batched", "all"):
        batched_section(args)
    if args.section in ("quant", "all"):
        quant_section(args)
    if args.section in ("sampling", "all"):
        sampling_section(args)


if __name__ == "__main__":
    main()
