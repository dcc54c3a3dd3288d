"""README commands cannot rot: every ``chatforge ...`` command in README.md is checked against the real
command-line parsers, in process and without running anything.

* fenced lines (```bash blocks, including ``torchrun ... -m chatforge ...``) must parse completely:
  every flag known, every value of the right type, required arguments present;
* inline spans (`chatforge chat --run speedrun`) name a real command whose ``--help`` lists each flag.
"""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from chatforge.cli import COMMANDS, main

README = Path(__file__).resolve().parents[1] / "README.md"
SUBCOMMANDS = {"data": ("run", "make-crawl", "eval"), "tok": ("train", "encode", "decode", "show", "stats")}


def fenced_commands(text: str) -> list[str]:
    out = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            m = re.search(r"(?:^|\s-m |^\.venv/bin/)chatforge (.*)", line)
            if m and not line.startswith("#"):
                out.append(m.group(1).strip())
    return out


def inline_commands(text: str) -> list[str]:
    spans = re.findall(r"`(?:\.venv/bin/)?chatforge ([^`]+)`", text)
    return [s for s in spans if "<" not in s]  # `chatforge <command>` is a pattern, not a command


class Parsed(Exception):
    pass


def parse_only(argv: list[str], monkeypatch) -> None:
    """Run ``chatforge argv`` up to its argument parsing, then stop (nothing is executed)."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        real(self, args, namespace)
        raise Parsed
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(Parsed):
        main(argv)


def test_readme_has_commands():
    text = README.read_text(encoding="utf-8")
    assert len(fenced_commands(text)) >= 8 and len(inline_commands(text)) >= 15


@pytest.mark.parametrize("line", fenced_commands(README.read_text(encoding="utf-8")))
def test_fenced_command_parses(line, monkeypatch, capsys):
    argv = shlex.split(line)
    assert argv[0] in COMMANDS, line
    try:
        parse_only(argv, monkeypatch)
    except SystemExit as e:  # argparse's error: unknown flag, bad value, missing argument
        pytest.fail(f"README: `chatforge {line}` does not parse: {capsys.readouterr().err.strip()} ({e})")


@pytest.mark.parametrize("span", inline_commands(README.read_text(encoding="utf-8")))
def test_inline_command_flags_exist(span, capsys):
    argv = shlex.split(span)
    assert argv[0] in COMMANDS, span
    prefix = argv[:2] if argv[0] in SUBCOMMANDS and len(argv) > 1 and argv[1] in SUBCOMMANDS[argv[0]] else argv[:1]
    try:
        main(prefix + ["--help"])   # argparse exits 0 after printing; `data --help` just returns
    except SystemExit as e:
        assert e.code in (0, None), span
    helptext = capsys.readouterr().out
    for flag in [a.split("=")[0] for a in argv if a.startswith("--")]:
        assert re.search(re.escape(flag) + r"\b", helptext), f"README: `chatforge {span}`: no {flag} in --help"


def test_the_check_catches_a_wrong_flag(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        parse_only(["chat", "--ckpt", "runs/speedrun/sft"], monkeypatch)
    assert "--ckpt" in capsys.readouterr().err
