"""The main job end to end on the `tiny` preset: every stage runs, in order, and leaves its artifacts."""
from __future__ import annotations

import pytest

from chatforge.common import CfError
from chatforge.speedrun import STAGES, SpeedrunConfig, speedrun


@pytest.mark.slow
def test_tiny_speedrun_runs_every_stage(tmp_path):
    rd = speedrun(SpeedrunConfig(run=str(tmp_path / "run"), preset="tiny", device="cpu"))
    report = (rd / "report.md").read_text()
    for stage in [s for s in STAGES if s != "rlhf"]:  # rlhf runs only with --preset full
        assert f"| {stage} | " in report and "FAILED" not in report
    for artifact in ["corpus/corpus.jsonl", "crawl/crawl.warc.gz", "data/data_report.md", "tokenizer/ranks.tiktoken",
                     "shards/shards.json", "base/metrics.json", "report/pretrain_loss.png"]:
        assert (rd / artifact).exists(), artifact
    for stage_dir in ["base", "sft", "rl"]:
        assert list((rd / stage_dir).glob("step_*/model.safetensors")), stage_dir


def test_bad_skip_and_preset_are_one_line_errors(tmp_path):
    with pytest.raises(CfError, match="--skip: unknown stage"):
        speedrun(SpeedrunConfig(run=str(tmp_path / "r"), skip="pretrian"))
    with pytest.raises(CfError, match="--preset: unknown preset"):
        speedrun(SpeedrunConfig(run=str(tmp_path / "r"), preset="huge"))
    assert not (tmp_path / "r").exists()  # nothing written for a bad config
