"""Engine: parity with the no-cache twin, sampling filters, stops, context limits, the tool hook."""
import pytest
import torch
import torch.nn as nn
from assistant_helpers import tiny_model, tiny_tokenizer, tiny_world

from chatforge.assistant.convo import letter_conversation, math_conversation
from chatforge.assistant.tools import ToolBox
from chatforge.common import CfError
from chatforge.model.batching import collate
from chatforge.model.engine import Engine, few_shot_prefix, naive_generate, sample_categorical, sample_next
from chatforge.model.gpt import GPT, GPTConfig

SPECIALS = ["<|bos|>", "<|assistant_end|>", "<|tool_start|>", "<|tool_end|>", "<|output_start|>", "<|output_end|>"]


class ByteTokenizer:
    """A stand-in tokenizer: ids 0..255 are bytes, specials follow."""
    bos_id = 256

    def special(self, name: str) -> int:
        return 256 + SPECIALS.index(name)

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode(errors="replace")


def tiny(flavour: str) -> GPT:
    kw = dict(vocab_size=300, seq_len=64, n_layer=2, n_head=4, n_kv_head=4, n_embd=64, mlp_hidden=128)
    if flavour == "llama":
        kw.update(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2)
    else:
        kw.update(pos="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True)
    torch.manual_seed(0)
    m = GPT(GPTConfig(**kw))
    m.init_weights()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # larger weights than the 0.02 init: sharp, varied logits (greedy paths that move)
        for p in m.parameters():
            if p.dim() == 2:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return m.eval()


PROMPT = [256, 5, 17, 200, 33, 4]


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_greedy_matches_naive_twin(flavour):
    m = tiny(flavour)
    ref = naive_generate(m, PROMPT, 20)
    assert len(set(ref)) > 1
    eng = Engine(m, ByteTokenizer())
    seqs, masks = eng.generate_batch(PROMPT, num_samples=3, max_new_tokens=20, temperature=0.0, stop_tokens=[])
    assert seqs == [ref] * 3 and masks == [[1] * 20] * 3


def test_seeded_sampling_matches_naive_twin_and_is_reproducible():
    m = tiny("llama")
    kw = dict(temperature=1.0, top_k=50, top_p=0.9, seed=7)
    ref = naive_generate(m, PROMPT, 15, **kw)
    eng = Engine(m)
    (one,), _ = eng.generate_batch(PROMPT, max_new_tokens=15, stop_tokens=[], **kw)
    assert one == ref
    a, _ = eng.generate_batch(PROMPT, num_samples=4, max_new_tokens=15, stop_tokens=[], **kw)
    b, _ = eng.generate_batch(PROMPT, num_samples=4, max_new_tokens=15, stop_tokens=[], **kw)
    assert a == b and len({tuple(s) for s in a}) > 1


def test_stop_tokens_and_streaming():
    m = tiny("gpt2")
    ref = naive_generate(m, PROMPT, 12)
    stop = ref[4]
    first = ref.index(stop)
    eng = Engine(m)
    steps = list(eng.generate(PROMPT, num_samples=2, max_new_tokens=12, temperature=0.0, stop_tokens=[stop]))
    assert len(steps) == first + 1                          # all samples done -> the iterator ends
    assert [t for t, _ in steps] == [[x, x] for x in ref[:first + 1]]
    assert naive_generate(m, PROMPT, 12, stop_tokens=[stop]) == ref[:first + 1]


def test_context_limits():
    m = tiny("llama")
    eng = Engine(m)
    long = [7] * 60
    seqs, _ = eng.generate_batch(long, max_new_tokens=10, temperature=0.0, stop_tokens=[])
    assert len(seqs[0]) == 5 and seqs[0] == naive_generate(m, long, 10)   # stops when the context is full
    with pytest.raises(CfError, match="exceed the model context"):
        eng.generate(list(range(65)), max_new_tokens=4)
    seqs, _ = eng.generate_batch(list(range(100)), max_new_tokens=4, temperature=0.0, truncate="left")
    assert len(seqs[0]) == 4
    with pytest.raises(CfError, match="outside the vocabulary"):
        eng.generate([300])
    with pytest.raises(CfError, match="at least one token"):
        eng.generate([])


def test_sample_next_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0, -1.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits[:3], 0.0).tolist() == [1, 1, 1]
    assert set(sample_next(logits, 5.0, top_k=1, generator=g).tolist()) == {1}
    assert set(sample_next(logits, 5.0, top_k=2, generator=g).tolist()) == {1, 2}
    assert set(sample_next(logits, 1.0, top_p=0.01, generator=g).tolist()) == {1}
    # p(1) = .665, p(2) = .245: nucleus 0.8 keeps exactly {1, 2}
    s = sample_next(logits, 1.0, top_p=0.8, generator=g)
    assert set(s.tolist()) == {1, 2}
    assert abs((s == 1).float().mean().item() - 0.665 / 0.91) < 0.04
    full = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(1))
    assert abs((full == 1).float().mean().item() - torch.softmax(logits[0], 0)[1].item()) < 0.04
    with pytest.raises(CfError):
        sample_next(logits, -1.0)


class ScriptedModel(nn.Module):
    """Emits script[row][k] as its k-th generated token (one-hot logits), whatever it is fed."""

    def __init__(self, scripts: list[list[int]], prompt_len: int):
        super().__init__()
        self.config = GPTConfig(vocab_size=300, seq_len=64, n_layer=1, n_head=1, n_kv_head=1, n_embd=8,
                                mlp_hidden=8)
        self.dummy = nn.Parameter(torch.zeros(1))
        self.scripts, self.prompt_len = scripts, prompt_len

    def forward(self, idx, targets=None, kv_cache=None):
        B, T = idx.shape
        kv_cache.advance(T)
        k = kv_cache.pos - self.prompt_len
        logits = torch.zeros(B, T, 300)
        for r in range(B):
            logits[r, -1, self.scripts[r][k]] = 1.0
        return logits


def test_tool_hook_forces_output_per_sample():
    tok = ByteTokenizer()
    sp = tok.special
    call = [sp("<|tool_start|>"), *tok.encode("calc\n1+2"), sp("<|tool_end|>")]
    pad = [0, 0, 0]                               # the model's picks while the output is forced
    row0 = [ord("a"), *call, *pad, *tok.encode("ok"), sp("<|assistant_end|>")]
    row1 = [ord("a"), *tok.encode("hi"), sp("<|assistant_end|>")] + [0] * 20
    calls = []

    def tools(name, inp):
        calls.append((name, inp))
        return str(eval(inp))                     # test-only calculator

    eng = Engine(ScriptedModel([row0, row1], len(PROMPT)), tok, tools=tools)
    steps = list(eng.generate(PROMPT, num_samples=2, max_new_tokens=40, temperature=0.0))
    assert calls == [("calc", "1+2")]
    toks0 = [t[0] for t, _ in steps]
    masks0 = [m[0] for _, m in steps]
    forced = [sp("<|output_start|>"), ord("3"), sp("<|output_end|>")]
    assert toks0 == [ord("a"), *call, *forced, *tok.encode("ok"), sp("<|assistant_end|>")]
    assert masks0 == [1] * (1 + len(call)) + [0, 0, 0] + [1, 1, 1]
    assert [t[1] for t, _ in steps][4:] == [-1] * (len(steps) - 4)   # row 1 finished after 4 tokens
    seqs, masks = eng.generate_batch(PROMPT, num_samples=2, max_new_tokens=40, temperature=0.0)
    assert seqs[0] == toks0 and masks[0] == masks0
    assert seqs[1] == [ord("a"), *tok.encode("hi"), sp("<|assistant_end|>")] and masks[1] == [1] * 4

    def broken(name, inp):
        raise ValueError("nope")
    eng = Engine(ScriptedModel([[ord("a"), *call] + [0] * 40], len(PROMPT)), tok, tools=broken)
    (s,), _ = eng.generate_batch(PROMPT, max_new_tokens=40, temperature=0.0)
    assert tok.decode(s).startswith("acalc\n1+2error: ValueError: nope")


def test_few_shot_prefix(tmp_path):
    p = tmp_path / "ex.jsonl"
    p.write_text('{"input": "2+2", "output": "4"}\n\n{"input": "3+3", "output": "6"}\n')
    assert few_shot_prefix(p) == "2+2 -> 4\n3+3 -> 6\n"
    p.write_text('{"input": "2+2"}\n')
    with pytest.raises(CfError, match="ex.jsonl:1"):
        few_shot_prefix(p)
    t = tmp_path / "ex.txt"
    t.write_text("Q: a\nA: b")
    assert few_shot_prefix(t) == "Q: a\nA: b\n"


def test_sample_cli(tmp_path, capsys):
    from chatforge.model.checkpoint import save_checkpoint
    from chatforge.model.engine import cli
    from chatforge.tokenizer.tokenizer import train_tokenizer
    tok = train_tokenizer(["the cat sat on the mat. " * 20, "a dog ran far away -> home\n" * 20], 300)
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tok.n_vocab, seq_len=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32,
                      mlp_hidden=64))
    m.init_weights()
    ck = save_checkpoint(tmp_path / "base", 0, m, tok, {})
    capsys.readouterr()   # drop anything printed while building the fixtures
    cli(["--ckpt", str(tmp_path / "base"), "--prompt", "the cat", "--max-new-tokens", "8", "--temperature", "0"])
    out = capsys.readouterr().out
    ref = naive_generate(m, [tok.bos_id] + tok.encode("the cat"), 8, stop_tokens=[tok.bos_id])
    assert out == "the cat" + tok.decode([t for t in ref if t != tok.bos_id]) + "\n"
    shots = tmp_path / "shots.jsonl"
    shots.write_text('{"input": "cat", "output": "mat"}\n')
    cli(["--ckpt", str(ck), "--prompt", "dog", "--few-shot", str(shots), "--num-samples", "2",
         "--max-new-tokens", "6", "--seed", "3"])
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2 and "cat -> mat\ndog ->" in out


def test_continuing_a_cache_equals_fresh_generation():
    from chatforge.model.gpt import KVCache
    m = tiny("llama")
    eng = Engine(m)
    cache = KVCache.for_model(m, 1)
    (a,), _ = eng.generate_batch(PROMPT, max_new_tokens=5, temperature=0.0, stop_tokens=[], kv_cache=cache)
    turn2 = PROMPT + a + [9, 10, 11]
    (b,), _ = eng.generate_batch(turn2, max_new_tokens=6, temperature=0.0, stop_tokens=[], kv_cache=cache)
    (fresh,), _ = eng.generate_batch(turn2, max_new_tokens=6, temperature=0.0, stop_tokens=[])
    assert b == fresh and cache.pos == len(turn2) + 5


# ----------------------------------------------------------------------------- generate_many (batched)

def _random_prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (int(t),), generator=g).tolist() for t in torch.randint(1, 30, (n,), generator=g)]


def _one_at_a_time(eng, prompts, num_samples, seed=0, **kw):
    """The reference: Engine.generate_batch on each prompt alone, prompt i with seed + i."""
    out = []
    for i, p in enumerate(prompts):
        out += eng.generate_batch(p, num_samples=num_samples, seed=seed + i, **kw)[0]
    return out


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_generate_many_matches_one_at_a_time(flavour):
    eng = Engine(tiny(flavour), ByteTokenizer())
    prompts = _random_prompts(9)
    free = _one_at_a_time(eng, prompts, 1, max_new_tokens=16, temperature=0.0, stop_tokens=[])
    stops = [free[0][2], free[1][7], free[2][11]]          # tokens the greedy paths reach at different steps
    for kw in (dict(temperature=0.0), dict(temperature=1.0, top_k=50, top_p=0.95)):
        if kw["temperature"]:
            stops += list(range(0, 300, 9))                 # random paths: enough stops to end at varied steps
        for n in (1, 3):
            ref = _one_at_a_time(eng, prompts, n, seed=3, max_new_tokens=16, stop_tokens=stops, **kw)
            assert len({len(s) for s in ref}) > 2          # stops fired at different steps: rows retire and refill
            for max_batch in (n, 4, 32):                    # one prompt at a time ... all in flight
                seqs, masks = eng.generate_many_masked(prompts, 16, seed=3, num_samples=n, stop_tokens=stops,
                                                       max_batch=max_batch, **kw)
                assert seqs == ref and masks == [[1] * len(s) for s in ref]
    assert eng.generate_many([], 4) == []
    with pytest.raises(CfError, match="outside the vocabulary"):
        eng.generate_many([[1, 2], [300]], 4)


def test_generate_many_context_limit_and_truncation():
    m = tiny("llama")
    eng = Engine(m)
    prompts = [[7] * 60, [3] * 10]
    seqs = eng.generate_many(prompts, 10, stop_tokens=[])
    assert [len(s) for s in seqs] == [5, 10]           # the 60-token prompt stops when the context is full
    assert seqs == _one_at_a_time(eng, prompts, 1, max_new_tokens=10, temperature=0.0, stop_tokens=[])
    prompts.append(list(range(100)))
    with pytest.raises(CfError, match="exceed the model context"):
        eng.generate_many(prompts, 10)
    seqs = eng.generate_many(prompts, 10, stop_tokens=[], truncate="left")
    assert seqs == _one_at_a_time(eng, prompts, 1, max_new_tokens=10, temperature=0.0, stop_tokens=[],
                                  truncate="left")


def _tool_model_and_prompts():
    """A tiny model trained (overfit, ~1 s) on tool-using replies of a tiny world, its toolbox and the
    prompts of those conversations plus some held-out ones."""
    world = tiny_world()
    tok = tiny_tokenizer(world)
    tools = ToolBox(enabled=("calculator", "python"))
    counts = [t for t in world.letters if t["kind"] == "count_letter"]
    convs = [math_conversation(p, "tool", tools) for p in world.problems[:6]]
    convs += [letter_conversation(t, "python", tools) for t in counts[:4]]
    x, y = collate([tok.render_conversation(c) for c in convs], pad_id=0)
    model = tiny_model(tok, seq_len=256).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        opt.zero_grad()
        model(x, targets=y).backward()
        opt.step()
    held_out = [math_conversation(p, "tool") for p in world.problems[6:10]]
    prompts = [tok.render_for_completion(c) for c in convs + held_out]
    return model.eval(), tok, tools, prompts


def test_generate_many_with_tools_matches_one_at_a_time():
    model, tok, tools, prompts = _tool_model_and_prompts()
    eng = Engine(model, tok, tools=tools)
    ref_seqs, ref_masks = [], []
    for p in prompts:
        s, m = eng.generate_batch(p, max_new_tokens=40, temperature=0.0)
        ref_seqs += s
        ref_masks += m
    out_start = tok.special("<|output_start|>")
    called = [s for s in ref_seqs if out_start in s]
    assert len(called) >= 8                                  # the trained model really calls its tools ...
    assert all(0 in m for s, m in zip(ref_seqs, ref_masks) if out_start in s)   # ... and outputs are forced
    for max_batch in (3, 32):
        seqs, masks = eng.generate_many_masked(prompts, 40, max_batch=max_batch)
        assert seqs == ref_seqs and masks == ref_masks


def test_sample_categorical_matches_multinomial_and_never_picks_zero_mass():
    """The inverse-CDF sampler (fast path) against torch.multinomial (its slow twin): the same
    frequencies on a skewed distribution with zero-mass tokens, and u at the top of [0, 1) stays on a
    token that has mass."""
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(40_000, 1)          # (N, V)
    fast = sample_categorical(probs, torch.rand(len(probs), 1, generator=g))
    slow = torch.multinomial(probs, 1, generator=g).squeeze(-1)
    f_fast, f_slow = (torch.bincount(x, minlength=6).float() / len(x) for x in (fast, slow))
    assert f_fast[[0, 2, 5]].sum() == 0
    assert torch.allclose(f_fast, probs[0], atol=0.01) and torch.allclose(f_fast, f_slow, atol=0.015)
    edge = sample_categorical(probs[:2], torch.tensor([[0.0], [1.0 - 1e-12]]))
    assert edge.tolist() == [1, 4]
