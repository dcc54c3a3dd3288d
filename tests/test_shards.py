"""Token shards: writer layout/atomicity, tokenize_corpus, TokenLoader sharding/wrap/resume."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from chatforge.common import CfError
from chatforge.data.shards import (ShardWriter, TokenLoader, doc_starts, read_shards_json, tokenize_corpus,
                              write_shards_json)
from chatforge.train.sft import replay_rows


class ByteTok:
    """A stand-in tokenizer: one token per UTF-8 byte, <|bos|> = 256."""
    n_vocab, bos_id = 257, 256

    def encode_batch(self, texts, num_threads=8):
        return [list(t.encode("utf-8")) for t in texts]

    def decode_bytes(self, ids):
        return b"".join(bytes([i]) if i < 256 else b"<|bos|>" for i in ids)


def write_split(d, split, docs, shard_tokens, bos=0, dtype="uint16"):
    w = ShardWriter(d, split, dtype, shard_tokens, bos_id=bos)
    for doc in docs:
        w.add(doc)
    return w.close()


def make_stream(d, n_tokens, shard_tokens=1000):
    """train/val shards holding 1..n_tokens (one document), so windows are easy to recognise."""
    info = {"train": write_split(d, "train", [np.arange(1, n_tokens)], shard_tokens, bos=0),
            "val": write_split(d, "val", [np.arange(1, 50)], shard_tokens, bos=0)}
    write_shards_json(d, info, "uint16", 70000 - 4465, 0, None)


def test_writer_roundtrip_doc_index_and_split_documents(tmp_path):
    docs = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]
    infos = write_split(tmp_path, "train", docs, shard_tokens=5, bos=1)
    stream = [1, 5, 6, 7, 1, 8, 1, 9, 10, 11, 12, 13, 1, 14, 15]
    assert [i["tokens"] for i in infos] == [5, 5, 5]
    got = np.concatenate([np.fromfile(tmp_path / i["file"], dtype="<u2") for i in infos])
    assert got.tolist() == stream
    # document index: per-shard offsets of <|bos|>; document 3 spills over into shard 2
    starts = [doc_starts(tmp_path, i).tolist() for i in infos]
    assert starts == [[0, 4], [1], [2]]
    assert all(np.fromfile(tmp_path / i["file"], dtype="<u2")[s].tolist() == [1] * len(s)
               for i, s_ in zip(infos, starts) for s in [s_])
    with pytest.raises(CfError, match="out of range"):
        ShardWriter(tmp_path, "x", "uint16", 10).add([70000])


def test_tokenize_corpus_stats_val_split_and_uint32(tmp_path):
    docs = [f"doc {i} " + "x" * i for i in range(20)]
    stats = tokenize_corpus(ByteTok(), iter(docs), tmp_path, val_fraction=0.1, shard_tokens=64, batch_docs=3)
    meta = read_shards_json(tmp_path)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 257 and meta["bos_id"] == 256
    assert stats["docs"] == {"train": 18, "val": 2}
    assert sum(len(d) + 1 for d in docs) == stats["tokens"]["train"] + stats["tokens"]["val"]
    assert sum(i["tokens"] for i in meta["splits"]["train"]) == stats["tokens"]["train"]
    assert sum(i["docs"] for i in meta["splits"]["val"]) == 2
    val = np.concatenate([np.fromfile(tmp_path / i["file"], dtype="<u2") for i in meta["splits"]["val"]])
    assert val[0] == 256 and bytes(val[1:1 + len(docs[0])].tolist()) == docs[0].encode()
    # a failing document stream leaves no shards.json (an unfinished set is never "complete")
    def bad():
        yield "fine"
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        tokenize_corpus(ByteTok(), bad(), tmp_path, val_docs=1)
    assert not (tmp_path / "shards.json").exists()
    big = ByteTok()
    big.n_vocab = 70000
    tokenize_corpus(big, ["ab"] * 3, tmp_path / "big", val_docs=1)
    assert read_shards_json(tmp_path / "big")["dtype"] == "uint32"


def test_loader_ranks_match_single_rank_and_are_disjoint(tmp_path):
    make_stream(tmp_path, 400, shard_tokens=150)
    B, T = 2, 8
    one = TokenLoader(tmp_path, "train", B, T)
    two = [TokenLoader(tmp_path, "train", B, T, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        a0, a1 = one.next(), one.next()
        b0, b1 = two[0].next(), two[1].next()
        for (xa, ya), (xb, yb) in ((a0, b0), (a1, b1)):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.shape == (B, T) and xa.dtype == torch.int64
        assert torch.equal(xa[:, 1:], ya[:, :-1])
        assert set(b0[0].flatten().tolist()).isdisjoint(b1[0].flatten().tolist())


def test_loader_wraps_with_epoch_and_resumes_exactly(tmp_path):
    make_stream(tmp_path, 300, shard_tokens=100)   # 3 shards of 100 -> 5 windows of 17 each
    L = TokenLoader(tmp_path, "train", 2, 8, seed=3)
    assert L.n_windows == 3 * (100 // 17)
    first_epoch = [L.next()[0] for _ in range(L.n_windows)]
    assert L.epoch == 1
    starts = sorted(int(x[0, 0]) for x in first_epoch)
    assert len(set(starts)) == L.n_windows         # every window once per epoch
    state = json.loads(json.dumps(L.state_dict()))  # JSON-safe
    cont = [L.next()[0] for _ in range(7)]
    R = TokenLoader(tmp_path, "train", 2, 8, seed=3)
    R.load_state_dict(state)
    assert all(torch.equal(a, R.next()[0]) for a in cont)
    with pytest.raises(CfError, match="B="):
        TokenLoader(tmp_path, "train", 1, 8, seed=3).load_state_dict(state)


def test_loader_errors_name_the_dir(tmp_path):
    with pytest.raises(CfError, match=str(tmp_path)):
        TokenLoader(tmp_path, "train", 2, 8)          # no shards.json
    make_stream(tmp_path, 20)
    with pytest.raises(CfError, match=f"{tmp_path}.*B\\*T\\+1 = 65"):
        TokenLoader(tmp_path, "train", 2, 32)
    with pytest.raises(CfError, match="split 'test' has 0 tokens"):
        TokenLoader(tmp_path, "test", 1, 4)


def test_replay_rows_are_distinct_fully_targeted_windows_of_the_train_split(tmp_path):
    make_stream(tmp_path, 3000)
    rows = replay_rows(tmp_path, 10, 16, SimpleNamespace(n_vocab=70000 - 4465), seed=3)
    assert len(rows) == 10 and all(len(ids) == 17 and mask == [1] * 17 for ids, mask in rows)
    assert len({tuple(ids) for ids, _ in rows}) == 10                       # distinct windows
    assert all(ids == list(range(ids[0], ids[0] + 17)) for ids, _ in rows)  # contiguous train tokens
    assert rows == replay_rows(tmp_path, 10, 16, SimpleNamespace(n_vocab=70000 - 4465), seed=3)
    with pytest.raises(CfError, match="vocab_size"):
        replay_rows(tmp_path, 10, 16, SimpleNamespace(n_vocab=300), seed=3)
