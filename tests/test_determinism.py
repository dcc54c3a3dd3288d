"""The main job end to end on the `tiny` preset, twice with one seed (issue 12).

Run `a` checks that every stage runs and leaves its artifacts; run `b` repeats it in another
directory, and the two must agree exactly: the same results.json, the same curated documents and the
same weights in every checkpoint. Provenance (paths, dates) and wall-clock timings in the stage
metadata may differ; nothing that is a result may.
"""
from __future__ import annotations

import gzip
import json

import pytest
import torch
from safetensors.torch import load_file

from chatforge.speedrun import STAGES, SpeedrunConfig, speedrun

SEED = 3
CHECKPOINTS = ["base", "mid", "sft", "sft_ablation", "rl"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny speedruns with the same seed in two run directories (about 50 s each on 1 thread)."""
    root = tmp_path_factory.mktemp("determinism")
    return [speedrun(SpeedrunConfig(run=str(root / name), preset="tiny", seed=SEED, device="cpu"))
            for name in ("a", "b")]


def _weights(run_dir, stage: str) -> dict[str, torch.Tensor]:
    paths = sorted((run_dir / stage).glob("step_*/model.safetensors"))
    assert paths, f"{stage}: no checkpoint"
    return load_file(str(paths[-1]))


@pytest.mark.slow
def test_tiny_speedrun_runs_every_stage(runs):
    rd = runs[0]
    report = (rd / "report.md").read_text()
    for stage in [s for s in STAGES if s != "rlhf"]:  # rlhf runs only with --preset full
        assert f"| {stage} | " in report and "FAILED" not in report
    for artifact in ["corpus/corpus.jsonl", "crawl/crawl.warc.gz", "data/data_report.md", "tokenizer/ranks.tiktoken",
                     "shards/shards.json", "base/metrics.json", "report/pretrain_loss.png", "results.json"]:
        assert (rd / artifact).exists(), artifact
    for stage_dir in ["base", "mid", "sft", "rl"]:
        assert list((rd / stage_dir).glob("step_*/model.safetensors")), stage_dir
    # SFT and its knowledge ablation both start from the midtrained model, not from the base
    sft_init = [(rd / d).glob("step_*/state.json") for d in ("sft", "sft_ablation")]
    for states in sft_init:
        assert "/mid/" in json.loads(next(states).read_text())["metrics"]["init"]
    assert (rd / "sft_data" / "mid.jsonl").exists()


@pytest.mark.slow
def test_same_seed_same_results(runs):
    a, b = runs
    assert (a / "results.json").read_text() == (b / "results.json").read_text()


@pytest.mark.slow
def test_same_seed_same_data_and_tokenizer(runs):
    a, b = runs
    for rel in ["crawl/crawl.warc.gz", "corpus/corpus.jsonl", "tokenizer/ranks.tiktoken", "sft_data/train.jsonl",
                "sft_data/mid.jsonl"]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for pa in sorted((a / "data" / "docs").glob("*.jsonl.gz")):  # gzip headers may carry an mtime
        assert gzip.decompress(pa.read_bytes()) == gzip.decompress((b / "data" / "docs" / pa.name).read_bytes()), pa.name


@pytest.mark.slow
@pytest.mark.parametrize("stage", CHECKPOINTS)
def test_same_seed_same_weights(runs, stage):
    wa, wb = _weights(runs[0], stage), _weights(runs[1], stage)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{stage}: tensor {name} differs"
