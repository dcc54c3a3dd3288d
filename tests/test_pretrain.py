"""Pretraining end to end on a tiny model: metrics/bpb, exact resume, crash-safe checkpoints,
2-rank DDP (gloo) == 1 rank with the same global batch, CLI errors."""
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from chatforge.common import CfError, make_config
from chatforge.data.shards import TokenLoader, tokenize_corpus

tokmod = pytest.importorskip("chatforge.tokenizer.tokenizer")
from chatforge.model.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state  # noqa: E402
from chatforge.model.gpt import GPT, config_from_depth  # noqa: E402
from chatforge.train.pretrain import PretrainConfig, cli, evaluate_bpb, pretrain, token_bytes, Dist  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


WORDS = "the cat dog sat on a mat and ran to her big small red house old tree by river".split()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """runs/<tmp>/{tokenizer, shards}: a ~300-token BPE on synthetic sentences."""
    rd = tmp_path_factory.mktemp("pre") / "run"
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + "." for _ in range(300)]
    tok = tokmod.train_tokenizer(docs, vocab_size=300)
    tok.save(rd / "tokenizer")
    tokenize_corpus(tok, docs, rd / "shards", val_fraction=0.05, shard_tokens=8000)
    return rd


def base_cfg(rd, **kw):
    d = dict(run=str(rd), depth=1, seq_len=32, device_batch_size=2, max_steps=6, eval_every=0,
             eval_tokens=512, save_every=0, keep_last=0, warmup=2, log_every=100)
    d.update(kw)
    return make_config(PretrainConfig, **d)


def fresh(rd, dst):
    shutil.copytree(rd / "tokenizer", dst / "tokenizer")
    shutil.copytree(rd / "shards", dst / "shards")
    return dst


def history(path):
    return json.loads((Path(path) / "state.json").read_text())["metrics"]["history"]


def test_pretrain_learns_and_writes_report_artifacts(run, tmp_path):
    rd = fresh(run, tmp_path / "r")
    out = pretrain(base_cfg(rd, max_steps=30, eval_every=15, optimizer="muon"))
    h = history(out)
    assert [s for s, _ in h] == list(range(1, 31))
    assert h[-1][1] < h[0][1] - 1.0          # it learns
    m = json.loads((rd / "base" / "metrics.json").read_text())["metrics"]
    assert m["steps"] == 30 and m["tokens"] == 30 * 2 * 32
    assert 0 < m["val_bpb"] < 8 and math.isfinite(m["val_loss"])
    assert (rd / "report" / "pretrain_loss.png").stat().st_size > 1000
    ck = load_checkpoint(rd / "base")
    assert ck.path == out and ck.step == 30 and not ck.model.training


def test_bpb_matches_a_direct_count(run):
    """Parity with the definition: a model that predicts uniformly has loss ln V on every target."""
    tok = tokmod.Tokenizer.load(run / "tokenizer")
    V = tok.n_vocab

    class Uniform(torch.nn.Module):
        def forward(self, x, y, reduction="none"):
            return torch.full(y.shape, math.log(V))

    loader = TokenLoader(run / "shards", "val", 2, 16)
    loss, bpb = evaluate_bpb(Uniform(), loader, 3, token_bytes(tok, V), "cpu", "float32", Dist())
    again = TokenLoader(run / "shards", "val", 2, 16)
    ys = [again.next()[1].flatten().tolist() for _ in range(3)]
    special = {tok.special(s) for s in tokmod.SPECIAL_TOKENS}
    targets = [t for y in ys for t in y if t not in special]
    nbytes = sum(len(tok.decode_bytes([t])) for t in targets)
    assert loss == pytest.approx(math.log(V))
    assert bpb == pytest.approx(len(targets) * math.log(V) / (math.log(2) * nbytes), rel=1e-6)


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_resume_is_bitwise_exact(run, tmp_path, optimizer):
    rd = fresh(run, tmp_path / "r")
    cfg = base_cfg(rd, max_steps=6, save_every=3, optimizer=optimizer, total_batch_tokens=128)  # accum 2
    full = history(pretrain(cfg))
    shutil.rmtree(rd / "base" / "step_000006")
    resumed = history(pretrain(replace(cfg, resume=True)))
    assert resumed == full                   # float equality, every step after the resume point


def test_resume_without_checkpoint_and_bad_batch_are_one_line_errors(run, tmp_path):
    rd = fresh(run, tmp_path / "r")
    with pytest.raises(CfError, match="--resume given but there is no complete checkpoint"):
        pretrain(base_cfg(rd, resume=True))
    with pytest.raises(CfError, match="total_batch_tokens: 100 is not a multiple"):
        pretrain(base_cfg(rd, total_batch_tokens=100))
    with pytest.raises(CfError, match="step \\d+: loss is (nan|inf)"):
        pretrain(base_cfg(rd, optimizer="adamw", lr=1e30, max_steps=20, grad_clip=0.0))
    with pytest.raises(SystemExit):
        cli(["--run", str(rd), "--optimizer", "sgd"])


def test_checkpoint_ties_vocab_check_pruning_and_rng(run, tmp_path):
    tok = tokmod.Tokenizer.load(run / "tokenizer")
    model = GPT(config_from_depth(1, tok.n_vocab, 16, "gpt2"))   # tied embeddings
    model.init_weights()
    for step in (1, 2, 3):
        p = save_checkpoint(tmp_path, step, model, tok, {"x": 1}, keep_last=2)
    assert sorted(q.name for q in tmp_path.glob("step_*")) == ["step_000002", "step_000003"]
    ck = load_checkpoint(tmp_path)
    assert ck.path == p and ck.model.lm_head.weight is ck.model.wte.weight
    assert all(torch.equal(a, b) for a, b in zip(ck.model.state_dict().values(), model.state_dict().values()))
    # a model narrower than its tokenizer is refused, naming the checkpoint
    small = GPT(config_from_depth(1, tok.n_vocab - 5, 16))
    bad = save_checkpoint(tmp_path / "bad", 1, small, tok, {})
    with pytest.raises(CfError, match=str(bad)):
        load_checkpoint(bad)
    # RNG states survive a JSON round trip
    st = json.loads(json.dumps(rng_state()))
    a = (random.random(), torch.rand(3))
    set_rng_state(st)
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


SAVER = r"""
import sys, torch
from chatforge.model.checkpoint import save_checkpoint
from chatforge.model.gpt import GPT, config_from_depth
model = GPT(config_from_depth(2, int(sys.argv[2]), 64)); model.init_weights()
opt = torch.optim.AdamW(model.parameters())
model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)).backward(); opt.step()
for step in range(1, 100000):
    save_checkpoint(sys.argv[1], step, model, None, {}, optimizer=opt, keep_last=3)
"""


def test_sigkill_during_save_leaves_a_loadable_checkpoint(run, tmp_path):
    stage = tmp_path / "base"
    tok = tokmod.Tokenizer.load(run / "tokenizer")
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(stage), str(tok.n_vocab)], cwd=REPO,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 60
        while len(list(stage.glob("step_*"))) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the saving subprocess died on its own"
        time.sleep(random.Random(1).uniform(0.05, 0.3))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ck = load_checkpoint(stage, tokenizer=tok)
    complete = [int(p.name[5:]) for p in stage.glob("step_*") if (p / "state.json").exists()]
    assert ck.step == max(complete) >= 1
    assert ck.optimizer_state() is not None
    # a half-written folder never counts: neither a temp folder nor a step dir without state.json
    (stage / f"step_{ck.step + 1:06d}").mkdir()
    (stage / f".step_{ck.step + 2:06d}.abc.tmp").mkdir()
    assert load_checkpoint(stage, tokenizer=tok).step == ck.step


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_rank(run, tmp_path_factory):
    rd = fresh(run, tmp_path_factory.mktemp("one"))
    return history(pretrain(base_cfg(rd, device_batch_size=1, total_batch_tokens=64, optimizer="muon")))


def launch_two_ranks(rd, *extra):
    port = _free_port()
    procs = []
    for r in range(2):
        env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "chatforge", "pretrain", "--run", str(rd), "--depth", "1",
             "--seq-len", "32", "--device-batch-size", "1", "--total-batch-tokens", "64", "--max-steps", "6",
             "--eval-every", "0", "--eval-tokens", "512", "--keep-last", "0", "--warmup", "2",
             "--optimizer", "muon", "--save-every", "3", *extra], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return history(rd / "base" / "step_000006")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_cpu_ranks_match_one_rank(run, tmp_path, one_rank, mode):
    """2 gloo ranks x batch 1 == 1 rank x batch 1 x 2 accumulation steps (fp32, rel 1e-4).
    FSDP2 also resumes exactly (its checkpoint gathers sharded weights and optimizer state)."""
    two = fresh(run, tmp_path / "two")
    extra = ["--fsdp"] if mode == "fsdp" else []
    h2 = launch_two_ranks(two, *extra)
    assert [s for s, _ in h2] == [s for s, _ in one_rank]
    for (_, a), (_, b) in zip(one_rank, h2):
        assert b == pytest.approx(a, rel=1e-4)
    if mode == "fsdp":
        shutil.rmtree(two / "base" / "step_000006")
        assert launch_two_ranks(two, *extra, "--resume") == h2
