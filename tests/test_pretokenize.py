"""``chatforge data tokenize``: parquet/JSONL -> shards with datatrove tasks; the same bytes for any
--tasks and as single-process ``tokenize_corpus`` (the twin); resume, and one-line errors."""
import gzip
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assistant_helpers import tiny_tokenizer, tiny_world
from chatforge.data import pretokenize as pt
from chatforge.common import CfError, read_json
from chatforge.data.shards import tokenize_corpus


def make_docs(n, seed=0):
    rng = random.Random(seed)
    words = "the cat sat on a mat while Ormivale city guide born river north 1234 é ü !".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(n)]


def write_inputs(folder, docs, n_parquet=5):
    """docs over n_parquet parquet files (one in a subfolder) and one JSONL.gz, in sorted-name order."""
    chunks = np.array_split(np.arange(len(docs)), n_parquet + 1)
    names = [f"part_{i:02d}.parquet" for i in range(n_parquet - 1)] + ["sub/part_99.parquet"]
    for name, idx in zip(names, chunks):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": [str(i) for i in idx], "text": [docs[i] for i in idx]}), folder / name)
    with gzip.open(folder / "zz.jsonl.gz", "wt") as f:
        for i in chunks[-1]:
            f.write(json.dumps({"text": docs[i], "id": str(i)}) + "\n")
    return sorted(names + ["zz.jsonl.gz"])


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok") / "tokenizer"
    tiny_tokenizer(tiny_world()).save(d)
    return d


def files_bytes(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.suffix in (".bin", ".idx")}


def test_tasks_parity_with_twin(tmp_path, tok_dir):
    docs = make_docs(1200)
    order = write_inputs(tmp_path / "in", docs)
    assert pt.list_inputs(tmp_path / "in")[1] == order
    cfg = dict(input=str(tmp_path / "in"), tokenizer=str(tok_dir), shard_tokens=5000, val_fraction=0.05)
    s1 = pt.tokenize_shards(pt.TokenizeConfig(out=str(tmp_path / "t1"), tasks=1, **cfg))
    s2 = pt.tokenize_shards(pt.TokenizeConfig(out=str(tmp_path / "t2"), tasks=2, **cfg))
    s3 = pt.tokenize_shards(pt.TokenizeConfig(out=str(tmp_path / "t3"), tasks=4, workers=1, **cfg))
    # the twin: one process, documents read in sorted-file order by pyarrow/gzip directly
    from chatforge.tokenizer.tokenizer import Tokenizer
    ordered = [d for name in order if name.endswith(".parquet")
               for d in pq.read_table(tmp_path / "in" / name)["text"].to_pylist()]
    ordered += [json.loads(line)["text"] for line in gzip.open(tmp_path / "in" / "zz.jsonl.gz", "rt")]
    ref = tokenize_corpus(Tokenizer.load(tok_dir), ordered, tmp_path / "ref", val_fraction=0.05, shard_tokens=5000)
    want = files_bytes(tmp_path / "ref")
    assert len(want) > 4  # several shards and both splits
    for d, s in (("t1", s1), ("t2", s2), ("t3", s3)):
        assert files_bytes(tmp_path / d) == want
        meta, ref_meta = read_json(tmp_path / d / "shards.json"), read_json(tmp_path / "ref" / "shards.json")
        assert meta["splits"] == ref_meta["splits"] and meta["stats"] == ref_meta["stats"]
        assert s["docs"] == ref["docs"] and s["bytes"] == ref["bytes"] and sum(s["docs"].values()) == 1200
        assert not (tmp_path / d / ".tokenize" / "parts").exists()


def test_single_file_resume_and_errors(tmp_path, tok_dir):
    docs = make_docs(300, seed=1)
    write_inputs(tmp_path / "in", docs, n_parquet=2)
    cfg = pt.TokenizeConfig(input=str(tmp_path / "in" / "part_00.parquet"), tokenizer=str(tok_dir),
                            out=str(tmp_path / "one"), val_docs=10)
    stats = pt.tokenize_shards(cfg)
    assert stats["files"] == 1 and stats["docs"] == {"train": 90, "val": 10}
    # resume: a part already done is not redone (its marker is trusted), a missing one is made
    work = tmp_path / "many" / ".tokenize"
    cfg = pt.TokenizeConfig(input=str(tmp_path / "in"), tokenizer=str(tok_dir), out=str(tmp_path / "many"))
    tok = pt.Tokenizer.load(tok_dir)
    folder, files = pt.list_inputs(cfg.input)
    (work / "parts").mkdir(parents=True)
    pt.tokenize_file(tok, folder, files[0], work / "parts" / "000000", cfg)
    before = (work / "parts" / "000000.json").stat().st_mtime_ns
    step = pt.TokenizeFiles(cfg, work / "parts")
    list(step.run(rank=0, world_size=1))
    assert (work / "parts" / "000000.json").stat().st_mtime_ns == before
    assert all((work / "parts" / f"{i:06d}.json").exists() for i in range(len(files)))
    # a damaged part is caught at merge
    (work / "parts" / "000001.bin").write_bytes(b"\0\0")
    with pytest.raises(CfError, match="damaged part"):
        pt.merge_parts(tok, work / "parts", len(files), cfg)
    (work / "parts" / "000001.json").unlink()
    with pytest.raises(CfError, match="1 of 3 input files not tokenized"):
        pt.merge_parts(tok, work / "parts", len(files), cfg)
    with pytest.raises(CfError, match="input not found"):
        pt.list_inputs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CfError, match="no .parquet"):
        pt.list_inputs(tmp_path / "empty")
    with pytest.raises(CfError, match="--out and --tokenizer"):
        pt.tokenize_shards(pt.TokenizeConfig(input=str(tmp_path / "in")))


def test_cli(tmp_path, tok_dir, capsys):
    from chatforge.cli import main
    write_inputs(tmp_path / "in", make_docs(60, seed=2), n_parquet=1)
    main(["data", "tokenize", "--input", str(tmp_path / "in"), "--tokenizer", str(tok_dir),
          "--out", str(tmp_path / "sh"), "--tasks", "2", "--workers", "1"])
    out = capsys.readouterr().out
    assert "60 documents" in out and "docs/s" in out
    assert read_json(tmp_path / "sh" / "shards.json")["stats"]["docs"]["val"] == 1


def test_tokenizer_trains_on_parquet_with_char_cap(tmp_path):
    """`chatforge tok train --input <fetched parquet> --max-chars N`: the text column, the first N chars."""
    from chatforge.tokenizer.tokenizer import iter_corpus, take_chars, train_from_corpus
    docs = make_docs(200, seed=3)
    write_inputs(tmp_path / "in", docs, n_parquet=2)
    pq_docs = list(iter_corpus(tmp_path / "in" / "part_00.parquet"))
    assert pq_docs == docs[:len(pq_docs)] and len(pq_docs) == 67
    assert list(take_chars(["abcd", "efgh", "ij"], 6)) == ["abcd", "ef"]
    tok = train_from_corpus(tmp_path / "in", 300, tmp_path / "tok", max_chars=2000)
    assert tok.meta["train"]["bytes"] <= 2000 * 2 and tok.n_vocab == 300
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(CfError, match="expected a parquet file with a 'text' column"):
        list(iter_corpus(tmp_path / "bad.parquet"))
