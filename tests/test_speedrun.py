"""The main job's config checks; the end-to-end `tiny` run (every stage, twice) is in test_determinism.py."""
from __future__ import annotations

import pytest

from chatforge.common import CfError
from chatforge.speedrun import SpeedrunConfig, speedrun


def test_bad_skip_and_preset_are_one_line_errors(tmp_path):
    with pytest.raises(CfError, match="--skip: unknown stage"):
        speedrun(SpeedrunConfig(run=str(tmp_path / "r"), skip="pretrian"))
    with pytest.raises(CfError, match="--preset: unknown preset"):
        speedrun(SpeedrunConfig(run=str(tmp_path / "r"), preset="huge"))
    assert not (tmp_path / "r").exists()  # nothing written for a bad config
