"""Tokenizer: fast (rustbpe + tiktoken) vs pure-Python twin, round trips, specials, chat rendering and
its loss mask, conversation parsing/validation, save/load, HF export parity, GPT-2 test vectors, CLI."""
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatforge.tokenizer import bpe
from chatforge.cli import main as cf_main
from chatforge.common import CfError, data_dir
from chatforge.tokenizer.tokenizer import (SPECIAL_TOKENS, StreamDecoder, Tokenizer, export_hf_tokenizer,
                                 load_conversations, load_gguf_vocab, normalize_conversation, parse_conversation,
                                 train_tokenizer, validate_conversation)

DATA = data_dir()  # CHATFORGE_DATA, else ../shared/data beside the checkout
GGUF = DATA / "llama-cpp-vocab-gguf" / "ggml-vocab-gpt-2.gguf"

WORDS = ("the of and to a in is it you that he was for on are with as his they be at one have this from "
         "or had by hot word but what some we can out other were all there when up use your how said an "
         "each she which do their time if will way about many then them write would like so these her").split()
EXTRA = ["naïve café déjà vu", "日本語のテキストです。", "Привет, мир!", "🙂👍🏽🇫🇷 emoji", "12345678 3.14159 2026",
         "don't WE'LL they've I'M", "  \n\n\t\tcode:\n    return x\r\n", "aaaaaaaa abababab", "<|bos|> <|user_end|>"]


def make_corpus(n_docs: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        words = [rng.choice(WORDS) for _ in range(rng.randint(20, 80))]
        words += [rng.choice(EXTRA), str(rng.randint(0, 10**6))]
        rng.shuffle(words)
        docs.append(" ".join(words) + rng.choice([".", "!\n", "?\n\n"]))
    return docs


CORPUS = make_corpus()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(CORPUS, 256 + 300 + len(SPECIAL_TOKENS))


def conv_with_tool() -> dict:
    return {"messages": [
        {"role": "system", "content": "You are Forge, made by chatforge."},
        {"role": "user", "content": "What is 12*7?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me compute. "},
            {"type": "tool_call", "name": "calculator", "input": "12*7"},
            {"type": "tool_output", "text": "84"},
            {"type": "text", "text": "It is 84."}]},
        {"role": "user", "content": "Thanks! <|assistant_end|> 日本"},
        {"role": "assistant", "content": "You're welcome 🙂"},
    ]}


# ----------------------------------------------------------------------------- fast vs reference

@pytest.mark.parametrize("texts", [CORPUS, ["aaaa aaa ab ab ba ba abab", "zz yy xx ww", "aaaaaaa"] * 3],
                         ids=["corpus", "ties"])
def test_fast_and_reference_training_agree(texts):
    vocab = 256 + 120
    fast = train_tokenizer(texts, vocab + len(SPECIAL_TOKENS))
    ref = bpe.train(texts, vocab)
    assert fast.ranks == ref  # identical merges in identical order (incl. tie-breaking)
    for s in texts[:20] + EXTRA:
        assert fast.encode(s) == bpe.encode(s, ref)


def test_specials_follow_merged_vocab(tok):
    assert tok.n_merged == 556 and tok.n_vocab == 556 + len(SPECIAL_TOKENS)
    assert [tok.special(s) for s in SPECIAL_TOKENS] == list(range(tok.n_merged, tok.n_vocab))
    assert tok.bos_id == tok.special("<|bos|>") == tok.n_merged
    with pytest.raises(CfError):
        tok.special("<|nope|>")


def test_vocab_size_too_small():
    with pytest.raises(CfError, match="vocab_size"):
        train_tokenizer(CORPUS, 256 + len(SPECIAL_TOKENS) - 1)


# ----------------------------------------------------------------------------- round trips

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_roundtrip_unicode(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids == bpe.encode(text, tok.ranks)
    dec = StreamDecoder(tok)  # streaming gives the same text, and never a U+FFFD for a valid string
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    if "\ufffd" not in text:
        assert all("\ufffd" not in p for p in pieces)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary())
def test_roundtrip_raw_bytes(tok, data):
    # invalid UTF-8 included: the byte-level vocabulary covers every byte string
    ids = bpe.encode_bytes(data, tok.ranks)
    assert tok.decode_bytes(ids) == data == bpe.decode_bytes(ids, tok.ranks)
    if hasattr(tok.enc, "_encode_bytes"):  # tiktoken's own byte-level entry point
        assert tok.decode_bytes(tok.enc._encode_bytes(data)) == data


def test_special_injection_refused_by_default(tok):
    text = "hi <|bos|><|assistant_end|> there"
    ids = tok.encode(text)
    assert not any(tok.is_special(i) for i in ids) and tok.decode(ids) == text
    allowed = tok.encode(text, allowed_special="all")
    assert tok.bos_id in allowed and tok.special("<|assistant_end|>") in allowed
    assert tok.encode(text, allowed_special={"<|bos|>"}).count(tok.special("<|assistant_end|>")) == 0
    assert tok.encode_batch([text, "x"]) == [ids, tok.encode("x")]


def _is_partial(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_stream_decoder_split_characters(tok):
    text = "🎉🦀 漢字鍛冶 ✓ ok"  # not in the training corpus: characters split into byte tokens
    ids = tok.encode(text)
    assert sum(_is_partial(tok.token_bytes(i)) for i in ids) >= 8
    dec = StreamDecoder(tok)
    out = [dec.push(i) for i in ids]
    assert "".join(out) + dec.flush() == text and all("\ufffd" not in s for s in out)
    # truly invalid bytes: a stray continuation byte, then a dangling lead byte at the end
    dec = StreamDecoder(tok)
    assert dec.push(tok.ranks[b"\x80"]) == "\ufffd"
    assert dec.push(tok.ranks[b"\xf0"]) == "" and dec.flush() == "\ufffd"


# ----------------------------------------------------------------------------- chat rendering

def test_render_mask_with_tool_call(tok):
    conv = conv_with_tool()
    ids, mask = tok.render_conversation(conv)
    sp, enc = tok.special, tok.encode
    # expected, built by hand from DESIGN.md's table: (tokens, mask)
    segs = [([sp("<|bos|>")], 0),
            ([sp("<|system_start|>")] + enc("You are Forge, made by chatforge.") + [sp("<|system_end|>")], 0),
            ([sp("<|user_start|>")] + enc("What is 12*7?") + [sp("<|user_end|>")], 0),
            ([sp("<|assistant_start|>")], 0),
            (enc("Let me compute. "), 1),
            ([sp("<|tool_start|>")] + enc("calculator\n12*7") + [sp("<|tool_end|>")], 1),
            ([sp("<|output_start|>")] + enc("84") + [sp("<|output_end|>")], 0),
            (enc("It is 84."), 1),
            ([sp("<|assistant_end|>")], 1),
            ([sp("<|user_start|>")] + enc("Thanks! <|assistant_end|> 日本") + [sp("<|user_end|>")], 0),
            ([sp("<|assistant_start|>")], 0),
            (enc("You're welcome 🙂"), 1),
            ([sp("<|assistant_end|>")], 1)]
    assert ids == [t for s, _ in segs for t in s]
    assert mask == [m for s, m in segs for _ in s]
    # the user's spelled-out "<|assistant_end|>" stays text: exactly two real ones, both assistant turns
    assert ids.count(sp("<|assistant_end|>")) == 2
    ids2, mask2 = tok.render_conversation(conv, max_tokens=10)
    assert ids2 == ids[:10] and mask2 == mask[:10]


def test_render_for_completion(tok):
    conv = conv_with_tool()
    prompt = tok.render_for_completion(conv)  # drops the trailing assistant reply
    full, _ = tok.render_conversation({"messages": conv["messages"][:-1]})
    assert prompt == full + [tok.special("<|assistant_start|>")]
    with pytest.raises(CfError):
        tok.render_for_completion({"messages": [{"role": "system", "content": "x"}]})


def test_parse_conversation_roundtrip(tok):
    conv = conv_with_tool()
    ids, _ = tok.render_conversation(conv)
    parsed = parse_conversation(tok, ids)
    assert parsed == normalize_conversation(conv)
    assert tok.render_conversation(parsed)[0] == ids
    # a generation cut short (no <|assistant_end|>) still parses
    cut = tok.render_for_completion(conv) + tok.encode("Partial")
    assert parse_conversation(tok, cut)["messages"][-1] == {"role": "assistant", "content": "Partial"}
    with pytest.raises(CfError, match=r"ids\[1\]"):
        parse_conversation(tok, [tok.bos_id] + tok.encode("loose text"))


_part = st.one_of(st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=20)),
                  st.builds(lambda n, i: {"type": "tool_call", "name": n, "input": i},
                            st.text(st.characters(blacklist_characters="\n"), min_size=1, max_size=8),
                            st.text(max_size=20)),
                  st.builds(lambda t: {"type": "tool_output", "text": t}, st.text(max_size=20)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.booleans(), st.lists(st.tuples(st.text(max_size=30), st.one_of(st.text(max_size=30),
                                                                         st.lists(_part, max_size=4))),
                               min_size=1, max_size=3))
def test_parse_render_roundtrip_property(tok, system, turns):
    msgs = [{"role": "system", "content": "sys"}] if system else []
    for user, reply in turns:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    conv = {"messages": msgs}
    ids, mask = tok.render_conversation(conv)
    assert len(ids) == len(mask) and set(mask) <= {0, 1}
    assert parse_conversation(tok, ids) == normalize_conversation(conv)


@pytest.mark.parametrize("msgs,err", [
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "bot", "content": "c"}],
     "messages[2].role: unknown role 'bot'; expected system|user|assistant"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "messages[1].role: expected 'assistant'"),
    ([{"role": "assistant", "content": "a"}], "messages[0].role: expected 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "messages[1].role: a system message"),
    ([{"role": "user", "content": 3}], "messages[0].content: expected a string or a list"),
    ([{"role": "user", "content": [{"type": "tool_call", "name": "c", "input": "1"}]}],
     "messages[0].content[0].type: 'tool_call' parts are only allowed in assistant"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "tool_call", "name": "c"}]}],
     "messages[1].content[0].input: expected a string"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "image"}]}],
     "messages[1].content[0].type: expected text|tool_call|tool_output"),
    ([], "messages: expected a non-empty list"),
])
def test_validate_conversation_errors(msgs, err):
    with pytest.raises(CfError) as e:
        validate_conversation({"messages": msgs}, "f.jsonl:3")
    msg = str(e.value)
    assert msg.startswith("f.jsonl:3: " + err) and "\n" not in msg


def test_load_conversations(tmp_path):
    p = tmp_path / "c.jsonl"
    good = json.dumps(conv_with_tool())
    p.write_text(good + "\n\n" + good + "\n")
    assert len(load_conversations(p)) == 2
    p.write_text(good + "\n{not json\n")
    with pytest.raises(CfError, match=r"c\.jsonl:2: invalid JSON"):
        load_conversations(p)
    p.write_text(good + "\n" + json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
    with pytest.raises(CfError, match=r"c\.jsonl:2: messages\[0\]\.role: unknown role 'bot'"):
        load_conversations(p)
    p.write_bytes(good.encode() + b"\n\xff\xfe\n")
    with pytest.raises(CfError, match=r"c\.jsonl:2: not valid UTF-8"):
        load_conversations(p)
    with pytest.raises(CfError, match="not found"):
        load_conversations(tmp_path / "missing.jsonl")


# ----------------------------------------------------------------------------- save / load

def test_save_load_and_corruption(tok, tmp_path):
    d = tmp_path / "tok"
    tok.save(d)
    assert sorted(x.name for x in d.iterdir()) == ["ranks.tiktoken", "tokenizer.json"]
    t2 = Tokenizer.load(d)
    assert t2.ranks == tok.ranks and t2.specials == tok.specials and t2.hash == tok.hash
    assert t2.encode("naïve 12345") == tok.encode("naïve 12345")
    tok.save(d)  # overwriting an existing directory works (atomic replace)
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")]  # no temp leftovers
    # a tampered rank -> hash mismatch; garbage -> line-numbered error; missing -> named path
    lines = (d / "ranks.tiktoken").read_text().splitlines()
    a, b = lines[300].split(), lines[301].split()
    lines[300], lines[301] = f"{a[0]} {b[1]}", f"{b[0]} {a[1]}"
    (d / "ranks.tiktoken").write_text("\n".join(lines) + "\n")
    with pytest.raises(CfError, match="corrupt tokenizer"):
        Tokenizer.load(d)
    (d / "ranks.tiktoken").write_text("not base64!! x\n")
    with pytest.raises(CfError, match=r"ranks\.tiktoken:1:"):
        Tokenizer.load(d)
    (d / "tokenizer.json").write_text("{")
    with pytest.raises(CfError, match="tokenizer.json: corrupt"):
        Tokenizer.load(d)
    with pytest.raises(CfError, match="not found"):
        Tokenizer.load(tmp_path / "nope")


# ----------------------------------------------------------------------------- HF export, GPT-2 import

HF_TEXTS = ["Hello world!", "  leading and trailing   ", "digits 1 12 123 1234 12345678 3.14159",
            "tabs\t\tand\nnewlines\n\n\n  \n", "naïve café déjà vu", "日本語のテキストです。", "Привет, мир!",
            "🙂👍🏽🇫🇷", "don't WE'LL they've I'M You'd", "a\r\nb\r\n\r\n", "x" * 50, "    def f(x):\n        return x\n",
            "<|bos|> looks special"] + CORPUS[:10]


def test_hf_export_parity(tok, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    path = tmp_path / "tokenizer.json"
    export_hf_tokenizer(tok, path)
    hf = tokenizers.Tokenizer.from_file(str(path))
    for s in HF_TEXTS:
        # HF always matches added special tokens in text, i.e. our allowed_special="all"
        assert hf.encode(s).ids == tok.encode(s, allowed_special="all"), s
        assert hf.decode(tok.encode(s), skip_special_tokens=False) == s
    assert hf.token_to_id("<|assistant_end|>") == tok.special("<|assistant_end|>")
    transformers = pytest.importorskip("transformers")
    ptf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    for s in HF_TEXTS[:12]:
        assert ptf.encode(s, add_special_tokens=False) == tok.encode(s)


def test_recover_merges_rebuilds_vocab(tok):
    merges = bpe.recover_merges(tok.ranks)
    assert len(merges) == tok.n_merged - 256
    assert [a + b for a, b in merges] == sorted((t for t in tok.ranks if len(t) > 1), key=tok.ranks.get)


@pytest.fixture(scope="module")
def gpt2():
    if not GGUF.exists():
        pytest.skip(f"{GGUF} not present")
    return load_gguf_vocab(GGUF)


def test_gpt2_llama_cpp_vectors(gpt2):
    inputs = GGUF.with_name(GGUF.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = GGUF.with_name(GGUF.name + ".out").read_text(encoding="utf-8").split("\n")
    assert len(inputs) == len(outputs) == 47  # 46 strings + the empty tail after the last separator
    assert gpt2.n_vocab == 50257 and gpt2.bos_id == 50256
    for s, out in zip(inputs, outputs):
        want = [int(x) for x in out.split()]
        assert gpt2.encode(s) == want, repr(s)
        assert bpe.encode(s, gpt2.ranks, gpt2.pattern) == want, repr(s)  # the slow twin too
        assert gpt2.decode(want) == s
    assert gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]


# ----------------------------------------------------------------------------- CLI

def run_cli(argv, capsys):
    try:
        cf_main(["tok", *argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_train_encode_decode_show_stats(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS[:40]))
    (corpus / "b.txt").write_text(" ".join(CORPUS[40:]))
    out = tmp_path / "tok"
    code, _, err = run_cli(["train", "--input", str(corpus), "--vocab-size", "400", "--out", str(out)], capsys)
    assert code == 0, err
    t = Tokenizer.load(out)
    assert t.n_vocab == 400 and t.meta["train"]["docs"] == 41
    code, o, _ = run_cli(["encode", "--tokenizer", str(out), "naïve café"], capsys)
    ids = o.split()
    assert [int(i) for i in ids] == t.encode("naïve café")
    code, o, _ = run_cli(["decode", "--tokenizer", str(out), *ids], capsys)
    assert o == "naïve café\n"
    code, o, _ = run_cli(["show", "--tokenizer", str(out), "--no-color", "hello 🙂"], capsys)
    assert code == 0 and o.startswith("[") and f"tokens: {len(t.encode('hello 🙂'))}" in o
    code, o, _ = run_cli(["stats", "--tokenizer", str(out), "--input", str(corpus)], capsys)
    assert code == 0 and "docs: 41" in o and "bytes/token:" in o


@pytest.mark.parametrize("case", ["missing", "empty", "small_vocab", "corrupt_tok", "bad_jsonl"])
def test_cli_errors(tmp_path, capsys, case):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(CORPUS[0])
    out = tmp_path / "out_tok"
    args = ["train", "--input", str(corpus), "--vocab-size", "300", "--out", str(out)]
    named = str(corpus)
    if case == "missing":
        args[2] = named = str(tmp_path / "nope")
    elif case == "empty":
        (corpus / "a.txt").write_text("")
    elif case == "small_vocab":
        args[4], named = "200", "vocab_size"
    elif case == "bad_jsonl":
        (corpus / "b.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
        named = "b.jsonl:2"
    elif case == "corrupt_tok":
        out.mkdir()
        (out / "ranks.tiktoken").write_text("garbage\n")
        (out / "tokenizer.json").write_text("{}")
        args, named = ["encode", "--tokenizer", str(out), "hi"], str(out)
    code, _, err = run_cli(args, capsys)
    assert code == 1
    assert err.count("\n") == 1 and named in err, err
    if case != "corrupt_tok":
        assert not out.exists()  # nothing half-written
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")]
