"""Serving benchmark: aggregate generated tokens/s and time-to-first-token with 1, 4, 16 concurrent
streaming clients vs sequential serving of the same requests (one client, one request at a time).

    .venv/bin/python bench/serve.py [--depth 8] [--requests 16] [--max-tokens 48] [--reps 3]

A randomly initialised d8 model (weights do not change the cost) behind the real server (uvicorn on
127.0.0.1, continuous batching); clients are threads speaking raw HTTP/SSE. Figures are medians over
--reps runs; the ratio is against sequential serving measured in the same run.
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_helpers import LiveServer, tiny_tokenizer  # noqa: E402


def one_request(port: int, i: int, max_tokens: int) -> tuple[float, float, int]:
    """(ttft seconds, total seconds, generated tokens) of one streaming completion."""
    body = {"model": "m", "prompt": f"Request {i}: once upon a time", "max_tokens": max_tokens,
            "temperature": 1.0, "seed": i, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    ttft, n = None, 0
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            n = ev["usage"]["completion_tokens"]
        elif ttft is None and ev["choices"] and ev["choices"][0]["text"]:
            ttft = time.perf_counter() - t0
    c.close()
    return (ttft if ttft is not None else time.perf_counter() - t0), time.perf_counter() - t0, n


def run(port: int, n_requests: int, concurrency: int, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        res = list(ex.map(lambda i: one_request(port, i, max_tokens), range(n_requests)))
    wall = time.perf_counter() - t0
    ttfts = sorted(r[0] for r in res)
    toks = sum(r[2] for r in res)
    return {"tok_s": toks / wall, "ttft_p50": statistics.median(ttfts),
            "ttft_p99": ttfts[min(len(ttfts) - 1, int(round(0.99 * (len(ttfts) - 1))))], "tokens": toks, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from chatforge.model.gpt import GPT, config_from_depth
    from chatforge.serve.server import create_app
    torch.manual_seed(0)
    model = GPT(config_from_depth(args.depth, args.vocab, args.seq_len))
    model.init_weights()
    model.to(args.device).eval()
    srv = LiveServer(create_app({"m": (model, tiny_tokenizer())}, max_batch=16))
    print(f"d{args.depth}: {model.num_params() / 1e6:.1f}M params, {args.requests} requests x {args.max_tokens} tokens, "
          f"device {args.device}, torch threads {torch.get_num_threads()}, medians of {args.reps}")
    try:
        run(srv.port, 4, 4, 8)  # warm-up
        modes = [("sequential", 1)] + [(f"{c} clients", c) for c in (1, 4, 16)]
        results: dict[str, list[dict]] = {m: [] for m, _ in modes}
        for _ in range(args.reps):           # interleave modes so machine noise hits all of them
            for name, c in modes:
                if name == "sequential":       # the same requests, strictly one after another
                    t0 = time.perf_counter()
                    res = [one_request(srv.port, i, args.max_tokens) for i in range(args.requests)]
                    wall = time.perf_counter() - t0
                    tt = sorted(r[0] for r in res)
                    results[name].append({"tok_s": sum(r[2] for r in res) / wall, "ttft_p50": statistics.median(tt),
                                          "ttft_p99": tt[-1], "tokens": sum(r[2] for r in res), "wall": wall})
                else:
                    results[name].append(run(srv.port, args.requests, c, args.max_tokens))
        ref = statistics.median(r["tok_s"] for r in results["sequential"])
        print(f"{'mode':<12} {'tok/s':>8} {'x seq':>6} {'TTFT p50':>9} {'TTFT p99':>9}")
        for name, _ in modes:
            med = {k: statistics.median(r[k] for r in results[name]) for k in ("tok_s", "ttft_p50", "ttft_p99")}
            print(f"{name:<12} {med['tok_s']:8.1f} {med['tok_s'] / ref:6.2f} {med['ttft_p50'] * 1000:7.0f}ms "
                  f"{med['ttft_p99'] * 1000:7.0f}ms")
        st = srv.server.config.app.state.served["m"].batcher.stats
        print(f"batcher: {st['steps']} decode steps, {st['tokens']} tokens, max {st['max_active']} rows at once")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
