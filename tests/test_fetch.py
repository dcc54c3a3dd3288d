"""``data fetch`` / ``eval fetch`` against a fake hub backed by a local folder (nothing downloads):
file selection, verification by size and SHA-256, resume/skip, one-line offline errors."""
import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import pytest

from chatforge.data import fetch as fe
from chatforge.common import CfError, read_json


class FolderHub:
    """A hub whose repositories are folders: listing reports true sizes and hashes (or ``lie`` ones)."""

    def __init__(self, root, corrupt=()):
        self.root, self.corrupt, self.downloads = Path(root), set(corrupt), []

    def list_files(self, repo, folder):
        d = self.root / repo / folder
        return [fe.RemoteFile(str(p.relative_to(self.root / repo)), p.stat().st_size,
                              hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted(d.iterdir()) if p.is_file()]

    def download(self, repo, path, local_dir):
        self.downloads.append(path)
        dst = Path(local_dir) / path
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.root / repo / path, dst)
        if path in self.corrupt:  # the transfer flips a byte
            b = bytearray(dst.read_bytes())
            b[0] ^= 1
            dst.write_bytes(bytes(b))
        return dst


@pytest.fixture
def hub(tmp_path):
    d = tmp_path / "hub" / "HuggingFaceFW" / "fineweb-edu" / "sample" / "10BT"
    d.mkdir(parents=True)
    for i in range(3):
        (d / f"000_0000{i}.parquet").write_bytes(bytes([i]) * (1000 + i))
    (d / "README.md").write_text("not data")
    return FolderHub(tmp_path / "hub")


def test_fetch_selects_verifies_and_skips(tmp_path, hub):
    out = tmp_path / "run" / "raw" / "fineweb-edu"
    res = fe.fetch_dataset("fineweb-edu", out, "10BT", shards=2, hub=hub)
    assert res["files"] == ["sample/10BT/000_00000.parquet", "sample/10BT/000_00001.parquet"]
    assert (out / "sample/10BT/000_00001.parquet").stat().st_size == 1001
    assert set(read_json(out / "fetch.json")["files"]) == set(res["files"])
    # second run: nothing downloaded again; a third shard is added
    hub.downloads.clear()
    fe.fetch_dataset("fineweb-edu", out, "10BT", shards=3, hub=hub)
    assert hub.downloads == ["sample/10BT/000_00002.parquet"]
    # a file damaged on disk (not in the manifest's state any more) is fetched again
    (out / "sample/10BT/000_00000.parquet").write_bytes(b"x")
    hub.downloads.clear()
    fe.fetch_dataset("fineweb-edu", out, "10BT", shards=3, hub=hub)
    assert hub.downloads == ["sample/10BT/000_00000.parquet"]


def test_fetch_rejects_corrupt_download(tmp_path, hub):
    hub.corrupt.add("sample/10BT/000_00001.parquet")
    out = tmp_path / "out"
    with pytest.raises(CfError, match="000_00001.parquet: downloaded file failed verification .SHA-256"):
        fe.fetch_dataset("fineweb-edu", out, "10BT", hub=hub)
    assert not (out / "sample/10BT/000_00001.parquet").exists()          # no file that looks complete
    assert list(read_json(out / "fetch.json")["files"]) == ["sample/10BT/000_00000.parquet"]
    (tmp_path / "hub/HuggingFaceFW/fineweb-edu/sample/100BT").mkdir(parents=True)
    with pytest.raises(CfError, match="no files matching"):
        fe.fetch_dataset("fineweb-edu", out, "100BT", hub=hub)
    with pytest.raises(CfError, match="unknown dataset"):
        fe.fetch_dataset("c4", out)


def test_real_hub_offline_is_one_line(tmp_path, monkeypatch):
    """HfHub with the hub client's network call mocked to fail as it does offline."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    def offline(*a, **k):
        raise OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/datasets/x: offline mode is enabled.")
    monkeypatch.setattr(HfApi, "list_repo_tree", offline)
    with pytest.raises(CfError, match=r"cannot reach the Hugging Face hub \(OfflineModeIsEnabled") as e:
        fe.fetch_dataset("smoltalk", tmp_path / "o")
    assert "\n" not in str(e.value)


def test_cli_help_and_eval_bundle(tmp_path, capsys):
    from chatforge.cli import main
    with pytest.raises(SystemExit) as e:
        main(["data", "fetch", "--help"])
    assert e.value.code == 0 and "--shards" in capsys.readouterr().out
    # eval fetch: a zip served by a fake opener, unpacked under dest/eval_bundle
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("eval_bundle/core.yaml", "icl_tasks: []\n")
        z.writestr("eval_bundle/eval_data/commonsense_reasoning/copa.jsonl", '{"query": "q"}\n')
    data = buf.getvalue()

    class Resp(io.BytesIO):
        status = 200

    target = fe.fetch_eval_bundle(tmp_path / "data", "http://x/eval_bundle.zip", opener=lambda req: Resp(data))
    assert (target / "core.yaml").exists() and (target / "eval_data/commonsense_reasoning/copa.jsonl").exists()
    assert not (tmp_path / "data" / "eval_bundle.zip.part").exists()
    with pytest.raises(CfError, match="not a zip file"):
        fe.fetch_eval_bundle(tmp_path / "d2", "http://x/z", opener=lambda req: Resp(b"<html>"))


def test_fetched_smoltalk_to_sft_data(tmp_path):
    """SmolTalk parquet (its messages column) -> valid chatforge conversations for `sft --fetched`."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from chatforge.train.sft_data import write_fetched
    from chatforge.tokenizer.tokenizer import load_conversations
    rows = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
             {"role": "assistant", "content": "4"}],
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],      # not alternating: skipped
            [{"role": "user", "content": "unanswered"}]]                                # no reply: skipped
    (tmp_path / "raw" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"messages": rows}), tmp_path / "raw" / "data" / "train-00000-of-00001.parquet")
    out = write_fetched(tmp_path / "run", [f"smoltalk={tmp_path / 'raw'}"])
    convs = load_conversations(out)
    assert [len(c["messages"]) for c in convs] == [2, 3] and out.name == "smoltalk.jsonl"
    assert len(load_conversations(write_fetched(tmp_path / "run", [f"smoltalk={tmp_path / 'raw'}:1"]))) == 1
    with pytest.raises(CfError, match="expected NAME=PATH"):
        write_fetched(tmp_path / "run", ["c4=x"])
