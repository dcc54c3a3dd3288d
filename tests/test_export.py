"""Export: GGUF read back with gguf.GGUFReader, and a transformers folder that generates like we do."""
from __future__ import annotations

import json
import random
import stat

import numpy as np
import pytest
import torch

from serve_helpers import tiny_model, tiny_tokenizer

# llama.cpp's pre-tokenizer regex for LLAMA_VOCAB_PRE_TYPE_LLAMA3 ("llama-bpe"), as written in
# src/llama-vocab.cpp (case-insensitive contractions spelled out as character classes).
LLAMA_BPE_REGEX = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEXT = "Hello world's 12345 DON'T  stop!!\n\n  ünïcödé\ttabs 3.14"
# The llama-bpe pre-tokenization of TEXT (worked out by hand from the rules: letters with one leading
# non-letter, digits in groups of <= 3, punctuation runs with their newlines, whitespace runs).
LLAMA_BPE_CHUNKS = ["Hello", " world", "'s", " ", "123", "45", " DON", "'T", " ", " stop", "!!\n\n", " ",
                    " ünïcödé", "\ttabs", " ", "3", ".", "14"]


def read_gguf(path):
    from gguf import GGUFReader
    r = GGUFReader(str(path))

    def val(key):
        f = r.fields[key]
        if len(f.types) > 1 or f.types[0].name == "ARRAY":      # arrays: one part per element
            return [f.contents(i) for i in range(len(f.data))]
        return f.contents()
    tensors = {t.name: np.array(t.data).reshape([int(x) for x in reversed(t.shape)]) for t in r.tensors}
    return val, tensors


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_llama_bpe_pretokenization_equals_ours(tok):
    import regex
    from tokenizers import Tokenizer as HFTokenizer
    from chatforge.tokenizer import bpe
    assert regex.findall(LLAMA_BPE_REGEX, TEXT) == LLAMA_BPE_CHUNKS
    assert regex.findall(tok.pattern, TEXT) == LLAMA_BPE_CHUNKS
    assert bpe.split_chunks(TEXT) == LLAMA_BPE_CHUNKS
    from chatforge.serve.export import hf_tokenizer_json
    hf = HFTokenizer.from_str(json.dumps(hf_tokenizer_json(tok)))
    b2u = bpe.bytes_to_unicode()
    assert [p for p, _ in hf.pre_tokenizer.pre_tokenize_str(TEXT)] == \
        ["".join(b2u[b] for b in c.encode()) for c in LLAMA_BPE_CHUNKS]


def test_permutation_round_trip():
    from chatforge.serve.export import permute_half_to_interleaved
    from chatforge.model.hf import permute_interleaved_to_half
    w = torch.randn(4 * 8, 5)
    p = permute_half_to_interleaved(w, 4)
    assert not torch.equal(p, w) and torch.equal(permute_interleaved_to_half(p, 4), w)
    # head 0 of a head_dim-8 q: rotate_half pairs (j, j+4) become adjacent rows (2j, 2j+1)
    assert torch.equal(p[0], w[0]) and torch.equal(p[1], w[4]) and torch.equal(p[2], w[1])


def test_gguf_llama_metadata_and_tensors(tok, tmp_path):
    from chatforge.serve.export import CHAT_TEMPLATE, write_gguf
    from chatforge.model.hf import permute_interleaved_to_half
    m = tiny_model("llama", 0)
    c = m.config
    path = write_gguf(m, tok, tmp_path / "m.gguf", name="tiny")
    val, tensors = read_gguf(path)
    assert val("general.architecture") == "llama"
    assert val("llama.block_count") == c.n_layer and val("llama.context_length") == c.seq_len
    assert val("llama.attention.head_count") == c.n_head and val("llama.attention.head_count_kv") == c.n_kv_head
    assert val("llama.embedding_length") == c.n_embd and val("llama.feed_forward_length") == c.mlp_hidden
    assert val("llama.rope.freq_base") == pytest.approx(c.rope_theta)
    assert val("tokenizer.ggml.model") == "gpt2" and val("tokenizer.ggml.pre") == "llama-bpe"
    tokens, types = val("tokenizer.ggml.tokens"), val("tokenizer.ggml.token_type")
    assert len(tokens) == c.vocab_size == len(types)      # padded to the model's vocab
    assert tokens[tok.bos_id] == "<|bos|>" and types[tok.bos_id] == 3 and types[0] == 1 and types[-1] == 5
    assert val("tokenizer.ggml.bos_token_id") == tok.bos_id
    assert val("tokenizer.ggml.eos_token_id") == tok.special("<|assistant_end|>")
    merges = val("tokenizer.ggml.merges")
    assert len(merges) == tok.n_merged - 256 and all(len(x.split(" ")) == 2 for x in merges)
    assert val("tokenizer.chat_template") == CHAT_TEMPLATE
    sd = m.state_dict()
    assert np.array_equal(tensors["token_embd.weight"], sd["wte.weight"].numpy())
    assert np.array_equal(tensors["output.weight"], sd["lm_head.weight"].numpy())
    for i in range(c.n_layer):
        q = torch.from_numpy(tensors[f"blk.{i}.attn_q.weight"].copy())
        k = torch.from_numpy(tensors[f"blk.{i}.attn_k.weight"].copy())
        assert torch.equal(permute_interleaved_to_half(q, c.n_head), sd[f"blocks.{i}.attn.c_q.weight"])
        assert torch.equal(permute_interleaved_to_half(k, c.n_kv_head), sd[f"blocks.{i}.attn.c_k.weight"])
        assert np.array_equal(tensors[f"blk.{i}.ffn_gate.weight"], sd[f"blocks.{i}.mlp.c_gate.weight"].numpy())
        assert np.array_equal(tensors[f"blk.{i}.ffn_down.weight"], sd[f"blocks.{i}.mlp.c_proj.weight"].numpy())
    assert not list(tmp_path.glob(".*tmp"))


def test_gguf_gpt2_fuses_qkv(tok, tmp_path):
    from chatforge.serve.export import write_gguf
    m = tiny_model("gpt2", 1)
    c = m.config
    val, tensors = read_gguf(write_gguf(m, tok, tmp_path / "g.gguf", dtype="f16"))
    assert val("general.architecture") == "gpt2"
    sd = m.state_dict()
    qkv = tensors["blk.0.attn_qkv.weight"]
    assert qkv.shape == (3 * c.n_embd, c.n_embd) and qkv.dtype == np.float16
    np.testing.assert_allclose(qkv[c.n_embd:2 * c.n_embd], sd["blocks.0.attn.c_k.weight"].numpy(), atol=1e-3)
    assert tensors["position_embd.weight"].shape == (c.seq_len, c.n_embd)
    assert "output.weight" not in tensors            # tied: llama.cpp reuses token_embd
    assert tensors["blk.0.attn_norm.bias"].dtype == np.float32


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_gguf_loads_in_transformers_with_equal_logits(tok, tmp_path, flavour):
    """An independent GGUF reader: transformers' GGUF loader (it un-permutes Q/K itself and builds a
    tokenizer from tokenizer.ggml.*) gives our logits and our tokenization."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")    # transformers needs it to load GGUF files
    from chatforge.serve.export import write_gguf
    # transformers maps gpt2's context_length to n_ctx, not n_positions: use GPT-2's 1024 positions
    m = tiny_model(flavour, 2, seq_len=1024 if flavour == "gpt2" else 96)
    write_gguf(m, tok, tmp_path / "m.gguf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    htok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    ids = [tok.bos_id] + tok.encode("The quick brown fox, 12*7=84!")
    assert htok("The quick brown fox, 12*7=84!", add_special_tokens=False)["input_ids"] == ids[1:]
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, m(x), atol=1e-4, rtol=1e-4)


def test_gguf_rejects_architectures_llama_cpp_lacks(tok, tmp_path):
    from chatforge.common import CfError
    from chatforge.serve.export import write_gguf
    m = tiny_model("llama", 0)
    m.config.mlp = "gelu"
    with pytest.raises(CfError, match="no HF architecture"):
        write_gguf(m, tok, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_hf_folder_generates_like_chatforge(tok, tmp_path):
    """transformers loads the exported folder; its greedy continuation and tokenization equal ours."""
    transformers = pytest.importorskip("transformers")
    from chatforge.serve.batcher import sequential_generate
    from chatforge.model.checkpoint import save_checkpoint
    from chatforge.serve.export import cli
    for flavour in ("llama", "gpt2"):
        m = tiny_model(flavour, 2)
        ck = save_checkpoint(tmp_path / flavour / "sft", 5, m, tok, {})
        out = tmp_path / f"hf_{flavour}"
        cli(["--format", "hf", "--ckpt", str(ck), "--out", str(out)])
        hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        htok = transformers.AutoTokenizer.from_pretrained(out)
        text = "The quick brown fox"
        ids = [tok.bos_id] + tok.encode(text)
        assert htok(text, add_special_tokens=False)["input_ids"] == ids[1:]
        ours = sequential_generate(m, ids, 12)
        with torch.no_grad():
            x = torch.tensor([ids])
            theirs = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False,
                                 eos_token_id=None)[0, len(ids):].tolist()
        assert theirs == ours, flavour
        conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12*7?"},
                {"role": "assistant", "content": "84."}, {"role": "user", "content": "And 2*3?"}]
        assert htok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=False) == \
            tok.render_for_completion({"messages": conv})
        gen = json.loads((out / "generation_config.json").read_text())
        assert tok.special("<|assistant_end|>") in gen["eos_token_id"]


def test_export_cli_gguf_and_bad_input(tok, tmp_path):
    from chatforge.model.checkpoint import save_checkpoint
    from chatforge.common import CfError
    from chatforge.serve.export import cli
    ck = save_checkpoint(tmp_path / "run" / "base", 1, tiny_model(), tok, {})
    cli(["--format", "gguf", "--ckpt", str(tmp_path / "run" / "base"), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "chatforge-run-base.gguf").exists()
    assert json.loads((tmp_path / "out" / "export_gguf.json").read_text())["kind"] == "export-gguf"
    with pytest.raises(CfError, match="no complete checkpoint"):
        cli(["--ckpt", str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")])
    with pytest.raises(SystemExit):
        cli(["--format", "onnx", "--ckpt", str(ck), "--out", str(tmp_path / "o3")])


# ----------------------------------------------------------------------------- llama.cpp round trips
# Only where llama-cpp-python is installed (.ci/run installs the wheel from ../shared/wheels).

def llama_strings(n: int = 240) -> list[str]:
    """Deterministic test strings: corpus fragments, digits, whitespace runs, contractions, unicode,
    emoji, control-token spellings (must stay text) and random printable mixes."""
    rng = random.Random(0)
    words = TEXT.split() + "Hello world The quick brown fox 12*7=84 Paris France".split()
    extra = ["", " ", "\n", "\n\n  \t", "<|assistant_end|>", "a<|bos|>b", "<|user_start|> hi <|user_end|>",
             "I'm", "DON'T", "we'll've", "3.14159", "1234567890", "😀 emoji 🎉", "naïve café",
             "日本語のテキスト",
             "    indented code:\n\tpass", "tabs\tand\r\nCRLF", "!!??..,,", "x" * 60]
    alphabet = "abcXYZ019 .,!?'\n\t-_<|>é😀"
    out = list(extra)
    while len(out) < n:
        k = rng.randrange(3)
        if k == 0:
            out.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))))
        elif k == 1:
            out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20))))
        else:
            out.append(rng.choice(extra) + rng.choice(words) + rng.choice(extra))
    return out


@pytest.fixture(scope="module")
def llama_f32(tok, tmp_path_factory):
    llama_cpp = pytest.importorskip("llama_cpp")
    from chatforge.serve.export import write_gguf
    m = tiny_model("llama", 0)
    path = write_gguf(m, tok, tmp_path_factory.mktemp("gguf") / "m.gguf")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=m.config.seq_len, logits_all=True, verbose=False)
    yield m, llm
    llm.close()


def llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


def test_llama_cpp_tokenizes_like_chatforge(tok, llama_f32):
    _, llm = llama_f32
    strings = llama_strings()
    assert len(set(strings)) >= 200
    for s in strings:   # special=False: control-token spellings in text stay text, as in chatforge
        assert llm.tokenize(s.encode(), add_bos=False, special=False) == tok.encode(s), s


def test_llama_cpp_greedy_continuation(tok, llama_f32):
    from chatforge.serve.batcher import sequential_generate
    m, llm = llama_f32
    for prompt in ["The quick brown fox", "Hello world!", "12*7=84", "What is the capital of France?",
                   "Once upon a time"]:
        ids = [tok.bos_id] + tok.encode(prompt)
        assert llama_greedy(llm, ids, 8) == sequential_generate(m, ids, 8), prompt


def test_llama_cpp_chat_prompt_and_stop_tokens(tok, llama_f32):
    """create_chat_completion renders our Jinja template and tokenizes it to exactly our prompt; the
    end-of-generation set is chatforge's stop set."""
    import llama_cpp
    from chatforge.model.engine import Engine
    m, llm = llama_f32
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12*7?"},
            {"role": "assistant", "content": "84."}, {"role": "user", "content": "And 2*3?"}]
    r = llm.create_chat_completion(conv, max_tokens=1, temperature=0.0)
    n = r["usage"]["prompt_tokens"]
    assert [int(t) for t in llm.input_ids[:n]] == tok.render_for_completion({"messages": conv})
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    eog = {i for i in range(m.config.vocab_size) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    assert eog == set(Engine(m, tok).default_stop_tokens())


@pytest.mark.parametrize("dtype", ["q8_0", "q4_k"])
def test_quantized_gguf_runs_in_llama_cpp(tok, tmp_path, dtype):
    """Q8_0 from the gguf package (dequantized weights within one step of the block scale) and Q4_K_M
    from llama.cpp's quantizer both load; Q8_0's logits stay close to ours."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from gguf import GGUFReader, GGMLQuantizationType, quants
    from chatforge.serve.export import write_gguf
    m = tiny_model("llama", 0)
    if dtype == "q4_k":  # k-quants need rows of 256: a width-256 model (depth 4)
        from chatforge.model.gpt import GPT, config_from_depth
        torch.manual_seed(0)
        m = GPT(config_from_depth(4, 304, 96, "llama"))
        m.init_weights()
        m.eval()
    path = write_gguf(m, tok, tmp_path / f"m-{dtype}.gguf", dtype=dtype)
    types = {t.name: t.tensor_type for t in GGUFReader(str(path)).tensors}
    if dtype == "q8_0":
        assert types["blk.0.attn_v.weight"] == GGMLQuantizationType.Q8_0
        assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32
        t = next(t for t in GGUFReader(str(path)).tensors if t.name == "blk.0.ffn_down.weight")
        w = m.state_dict()["blocks.0.mlp.c_proj.weight"].numpy()
        deq = quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        assert np.abs(deq - w).max() <= np.abs(w).max() / 127 + 1e-6
    else:
        assert GGMLQuantizationType.Q4_K in set(types.values())
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=m.config.seq_len, logits_all=True, verbose=False)
    ids = [tok.bos_id] + tok.encode("The quick brown fox")
    llm.eval(ids)
    theirs = torch.from_numpy(np.array(llm.scores[:len(ids)]))
    llm.close()
    with torch.no_grad():
        ours = m(torch.tensor([ids]))[0]
    corr = torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1]
    assert corr > (0.999 if dtype == "q8_0" else 0.95), corr
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
