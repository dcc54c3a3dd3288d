"""Outputs never delete what the user did not ask to delete (issue 14): atomic_path merges into an
existing folder, a non-empty --out is refused unless --force, OS errors are one-line CfErrors."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from chatforge.common import CfError, atomic_path, atomic_write_text, check_out_dir
from serve_helpers import tiny_model, tiny_tokenizer


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_atomic_path_merges_into_an_existing_folder(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "mine.txt").write_text("keep me")
    (out / "sub" / "mine.txt").write_text("keep me too")
    (out / "a.txt").write_text("old a")
    with atomic_path(out) as tmp:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "a.txt").write_text("new a")
        (tmp / "sub" / "b.txt").write_text("new b")
    assert snapshot(out) == {"a.txt": b"new a", "mine.txt": b"keep me", "sub/b.txt": b"new b",
                             "sub/mine.txt": b"keep me too"}
    assert not list(tmp_path.glob(".*tmp"))


def test_atomic_path_failure_leaves_the_folder_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / "mine.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert snapshot(out) == {"mine.txt": b"keep me"} and not list(tmp_path.glob(".*tmp"))


def test_atomic_path_replace_dir_is_explicit(tmp_path):
    out = tmp_path / "step_000001"
    out.mkdir()
    (out / "stale.pt").write_text("x")
    with atomic_path(out, replace_dir=True) as tmp:
        tmp.mkdir()
        (tmp / "model.safetensors").write_text("y")
    assert snapshot(out) == {"model.safetensors": b"y"}


def test_files_are_0644_and_folders_0755(tmp_path):
    with atomic_path(tmp_path / "d") as tmp:
        tmp.mkdir()
        fd = os.open(tmp / "secretive", os.O_WRONLY | os.O_CREAT, 0o600)   # as safetensors does
        os.close(fd)
    assert stat.S_IMODE((tmp_path / "d" / "secretive").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


@pytest.mark.parametrize("bad", ["/proc/chatforge_x/y", "/dev/null/x"])
def test_unwritable_paths_are_one_line_errors(bad):
    with pytest.raises(CfError, match="cannot write there") as e:
        atomic_write_text(bad, "x")
    assert "\n" not in str(e.value)


def test_check_out_dir(tmp_path, monkeypatch):
    assert check_out_dir(tmp_path / "new", force=False) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty", force=False)
    (tmp_path / "f").write_text("x")
    with pytest.raises(CfError, match="not a folder"):
        check_out_dir(tmp_path / "f", force=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CfError, match="not empty; pass --force"):
        check_out_dir(".", force=False)
    check_out_dir(".", force=True)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from chatforge.model.checkpoint import save_checkpoint
    d = tmp_path_factory.mktemp("run")
    return save_checkpoint(d / "run" / "sft", 3, tiny_model(), tiny_tokenizer(), {})


def test_checkpoint_model_file_is_0644(ckpt):
    assert stat.S_IMODE((ckpt / "model.safetensors").stat().st_mode) == 0o644


def test_export_refuses_a_non_empty_folder_and_force_keeps_foreign_files(ckpt, tmp_path, monkeypatch):
    from chatforge.serve.export import cli
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "config.json").write_text("{}")
    before = snapshot(out)
    for fmt in ("hf", "gguf"):
        with pytest.raises(CfError, match="not empty; pass --force"):
            cli(["--format", fmt, "--ckpt", str(ckpt), "--out", str(out)])
        assert snapshot(out) == before
    cli(["--format", "hf", "--ckpt", str(ckpt), "--out", str(out), "--force"])
    after = snapshot(out)
    assert after["notes.txt"] == b"my notes" and after["config.json"] != b"{}"
    assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json", "export_hf.json"} <= set(after)
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644
    monkeypatch.chdir(out)            # --out . : refused, then merged with --force
    with pytest.raises(CfError, match="not empty"):
        cli(["--format", "gguf", "--ckpt", str(ckpt), "--out", "."])
    cli(["--format", "gguf", "--ckpt", str(ckpt), "--out", ".", "--force"])
    assert snapshot(out)["notes.txt"] == b"my notes" and (out / "chatforge-run-sft.gguf").exists()
    assert stat.S_IMODE((out / "chatforge-run-sft.gguf").stat().st_mode) == 0o644


def test_tok_train_and_import_refuse_non_empty_out(tmp_path):
    from chatforge.model.hf import cli as import_cli
    from chatforge.tokenizer.tokenizer import cli as tok_cli
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world " * 50)
    with pytest.raises(CfError, match="not empty"):
        tok_cli(["train", "--input", str(corpus), "--vocab-size", "270", "--out", str(out)])
    with pytest.raises(CfError, match="not empty"):
        import_cli([str(tmp_path / "whatever"), "--out", str(out)])
    tok_cli(["train", "--input", str(corpus), "--vocab-size", "270", "--out", str(out), "--force"])
    assert (out / "mine.txt").read_text() == "x" and (out / "ranks.tiktoken").exists()


def test_cli_unwritable_out_exits_non_zero_with_one_line(ckpt, capsys):
    from chatforge.cli import main
    for bad in ("/dev/null/x", "/proc/chatforge_x"):
        with pytest.raises(SystemExit) as e:
            main(["export", "--format", "gguf", "--ckpt", str(ckpt), "--out", bad])
        assert e.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"chatforge export: error: {bad}"), err
