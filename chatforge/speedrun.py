"""``chatforge speedrun``: every stage, end to end, on the embedded synthetic world.

    world -> crawl (WARC.gz) -> data curation -> tokenizer -> token shards -> pretrain -> sample
          -> SFT data (+ knowledge probes) -> SFT -> experiments -> RL (GRPO) [-> RLHF with --preset full]
          -> arena (the models against each other on held-out prompts)

Each stage is a library call; this module only wires them through one run directory, times them,
and writes ``report.md`` after every stage (so a run that fails half-way still leaves a report).
Presets size the run in steps and tokens, never seconds, so one seed gives the same numbers on any
machine (the ``--*-seconds`` flags are opt-in overrides that trade that away): ``tiny`` (tests),
``default`` (sized for a 2-core CPU without native bf16), ``full``. A run directory holds one run: a
new run clears the stage folders of a previous one first (only those), unless ``--resume``.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from chatforge.common import (add_config_args, CfError, config_from_args, get_device, machine_info, make_config,
                              make_parser, print0, print_config, read_json, read_jsonl, run_dir, write_meta)
from chatforge.data.crawl import make_crawl
from chatforge.data.curate import DataConfig, evaluate_filters, format_eval, iter_clean_docs, run_pipeline
from chatforge.data.shards import tokenize_corpus
from chatforge.eval.arena import ArenaConfig, run_arena
from chatforge.eval.experiments import run_experiments
from chatforge.model.checkpoint import load_checkpoint
from chatforge.model.engine import Engine
from chatforge.report import marked_section, md_table, Report
from chatforge.rl.experiments import run_preference_stage, run_rl_stage, run_rlhf_stage
from chatforge.tokenizer.tokenizer import Tokenizer, train_tokenizer
from chatforge.train.pretrain import pretrain, PretrainConfig
from chatforge.train.sft import sft, SFTConfig
from chatforge.train.sft_data import build_sft_data, SFTMix
from chatforge.world.build import build_world, WorldConfig, write_world


@dataclass
class SpeedrunConfig:
    run: str = field(default="speedrun", metadata={"help": "run name (runs/<run>) or path"})
    preset: str = field(default="default", metadata={"help": "size of the run",
                                                     "choices": ["tiny", "default", "full"]})
    seed: int = field(default=1337, metadata={"help": "one seed for the world, data order and init"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | mps"})
    skip: str = field(default="", metadata={"help": "comma-separated stages to skip (e.g. 'rl,sample')"})
    depth: int = field(default=0, metadata={"help": "model depth (0 = the preset's)"})
    dtype: str = field(default="auto", metadata={"help": "training autocast: auto (bf16 where the hardware has it) | "
                                                         "float32 (stand in for a CPU without bf16)",
                                                 "choices": ["auto", "float32", "bfloat16"]})
    pretrain_seconds: float = field(default=0.0, metadata={"help": "opt-in: stop pretraining after this many "
                                                           "seconds (0 = the preset's steps; results then vary "
                                                           "with the machine)"})
    sft_seconds: float = field(default=0.0, metadata={"help": "opt-in: SFT time budget (0 = the preset's steps)"})
    rl_seconds: float = field(default=0.0, metadata={"help": "opt-in: RL time budget (0 = the preset's steps)"})
    resume: bool = field(default=False, metadata={"help": "keep the stage folders of a previous run in this "
                                                          "directory (default: clear them first)"})


# Everything a preset decides, in one table so the sizes are easy to read and change.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_people=60, n_bios=4, n_problems=300, n_spelling=150, n_filler=2, vocab_size=512,
                 depth=2, head_dim=32, seq_len=256, batch=8, pretrain_steps=60, mid_steps=8, mid_tool_drill=40,
                 mid_worked_drill=40, sft_tool_drill=20, sft_worked_drill=20, sft_steps=40, rl_steps=3,
                 sft_math=120, sft_letters=100, sft_identity=200, rl_group=4, n_eval_rl=10, n_arena=2,
                 n_reason=10, bon_prompts=0, rm_prompts=0, bon_max_n=0, rl_screen=16, rl_tokens=48, rl_lr=3e-4,
                 extractor="resiliparse"),
    # Sized for a 2-core AVX2 CPU in fp32 (no bf16) to finish in about 10 minutes; the choices were
    # measured on validation worlds (seeds 7 and 8), never on the speedrun's items (dev/LOG.md,
    # "Session 4" and "Session 5"). d2 (128 wide, 1.5M parameters) at ~9K tok/s sees 4x the tokens of d4 in the
    # same time, and that matters more here than width: at equal wall time d2 stored more facts (cloze
    # 38% vs 25% for d3); twice the default learning rates stored 79% (vs 51%).
    # people: 40 train-QA + 20 held-out with 24 bios, 20 with one bio, 160 unknown (100 for refusal
    # training, 60 held out). 40 train-QA people instead of 20 and 400 SFT steps instead of 200 took
    # held-out extraction from 81% to 92%; 600 pretraining steps instead of 400 took a second validation
    # world (seed 8) from 86% to 98%. 400 identity conversations: 200 gave 17%, 400 40%, 800 56%
    # on held-out wordings, but 800 lifted hallucination on unknown people to 11%. Every wording of
    # every train-QA fact (sft_known_qa 800 asks for more than the ~600 there are) beside 300 refusals:
    # known people 53% -> 74% answered right, unknown 4.7% -> 8% answered; 200 refusals: 89% and 33%.
    # Session 6 (validation world seed 8): 4 heads of 32 instead of 2 of 64 (same cost) stored more facts
    # (base cloze 91% -> 98%; seed 7: 91% -> 95%); midtraining 1000 steps on 8,000 drill chains and 2,000
    # more in SFT took calculator chains from 0-7% to 77-96% and worked ones from 4-12% to 11-88%, and
    # 450 refusals (not 300) keep their share of the larger SFT mixture (hallucination 75% -> 46%).
    # Session 7 (seed 7): midtraining 600 / 1000 / 1500 steps: worked chains of 4 steps 21 / 28 / 44%,
    # calculator chains of 5 steps 59 / 73 / 80% (session 6's "600 did what 1000 did" had read a 1000-step
    # checkpoint through a link). 1,500 drill steps alone cut the base's cloze recall 95% -> 25%;
    # 2,000 replayed pretraining windows among them kept it at 97% (held-out extraction 92% -> 97%).
    # GRPO 60 steps at lr 5e-5 (seed 7): pass@1 +9.8 [+7.2, +12.5], control +1.3 [-0.3, +3.1]; 20 steps
    # at 3e-4 drove the control down 31 points.
    # KL coefficient 0.3 (not 0.02) holds the shuffled control at its start: pass@1 -0.8 on seeds 7 and 8
    # (0.02: -3.1 on seed 8), GRPO +5.2 / +9.3.
    "default": dict(n_people=240, n_bios=24, known_fraction=0.25, k1_fraction=0.0834, qa_fraction=0.667,
                    name_mentions=12,
                    n_problems=3000, n_spelling=1500, n_filler=2, vocab_size=4096,
                    depth=2, head_dim=32, seq_len=256, batch=16, pretrain_steps=600, pretrain_lr=0.006,
                    pretrain_muon_lr=0.04, mid_steps=1500, mid_replay=2000, mid_tool_drill=4000, mid_worked_drill=4000,
                    sft_tool_drill=1000, sft_worked_drill=1000, sft_idk=450,
                    sft_steps=400, rl_steps=60, sft_math=600, sft_letters=400, sft_identity=400, sft_known_qa=800,
                    rl_group=8,
                    n_eval_rl=300, n_arena=6, n_reason=100, bon_prompts=200, rm_prompts=120, bon_max_n=32,
                    rl_screen=400, rl_tokens=48, rl_lr=5e-5, rl_kl=0.3, extractor="resiliparse"),
    "full": dict(n_people=1000, n_bios=6, n_problems=8000, n_spelling=4000, n_filler=5, vocab_size=8192,
                 depth=6, seq_len=512, batch=16, pretrain_steps=3000, sft_steps=1500, rl_steps=300,
                 sft_math=1500, sft_letters=1000, sft_identity=200, rl_group=16, n_eval_rl=400, n_arena=30,
                 n_reason=100, bon_prompts=200, rm_prompts=240, bon_max_n=64, rl_screen=1000, rl_tokens=80, rl_lr=1e-4,
                 extractor="trafilatura"),
}

STAGES = ["world", "crawl", "data", "tokenizer", "shards", "pretrain", "sample", "sft_data", "mid", "sft", "rl", "rlhf",
          "arena"]

# What a run writes into its directory; a new run clears exactly these (never anything else there).
RUN_OUTPUTS = ["world", "corpus", "crawl", "data", "tokenizer", "shards", "base", "sft_data", "mid", "sft",
               "sft_ablation", "rl", "rm", "rlhf", "dpo", "eval", "arena", "report", "report.md", "results.json",
               "speedrun.json"]


def clear_previous_run(rd: Path) -> None:
    """Remove a previous run's stage outputs, so no stage can read (or score) an old checkpoint."""
    old = [rd / name for name in RUN_OUTPUTS if (rd / name).exists()]
    if old:
        print0(f"speedrun: clearing the previous run's outputs in {rd}: {', '.join(o.name for o in old)} "
               "(pass --resume to keep them)")
    for o in old:
        shutil.rmtree(o) if o.is_dir() else o.unlink()


def speedrun(cfg: SpeedrunConfig) -> Path:
    """Run every stage; return the run directory (with report.md)."""
    if cfg.preset not in PRESETS:
        raise CfError(f"--preset: unknown preset '{cfg.preset}'; expected one of {sorted(PRESETS)}")
    skip = {s.strip() for s in cfg.skip.split(",") if s.strip()}
    bad = skip - set(STAGES)
    if bad:
        raise CfError(f"--skip: unknown stage(s) {sorted(bad)}; expected some of {STAGES}")
    p = dict(PRESETS[cfg.preset])
    if cfg.depth:
        p["depth"] = cfg.depth
    rd = run_dir(cfg.run)
    if not cfg.resume:
        clear_previous_run(rd)
    rd.mkdir(parents=True, exist_ok=True)
    write_meta(rd / "speedrun.json", "speedrun", cfg, preset_values=p)
    machine = machine_info(get_device(cfg.device), cfg.dtype)
    timed = [f"--{k.replace('_', '-')} {v:g}" for k, v in (("pretrain_seconds", cfg.pretrain_seconds),
                                                         ("sft_seconds", cfg.sft_seconds), ("rl_seconds", cfg.rl_seconds)) if v]
    report = Report(rd, header=[f"preset `{cfg.preset}`, seed {cfg.seed}: " + json.dumps(p),
                                "machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
                                ("time budgets " + ", ".join(timed) + ": numbers depend on this machine's speed")
                                if timed else "fixed steps and tokens: the same seed gives the same numbers"])
    ctx: dict[str, Any] = {"rd": rd, "preset": p, "cfg": cfg}
    t_start = time.perf_counter()
    for name in STAGES:
        if name in skip or (name == "rlhf" and cfg.preset != "full"):
            continue
        fn: Callable[[dict, Report], None] = globals()[f"stage_{name}"]
        print0(f"\n===== speedrun stage: {name} =====")
        t0 = time.perf_counter()
        try:
            fn(ctx, report)
        except BaseException:
            report.time(name, time.perf_counter() - t0, "FAILED")
            raise
        dt = time.perf_counter() - t0
        report.time(name, dt)
        print0(f"[time] {name}: {dt:.1f}s (total {time.perf_counter() - t_start:.1f}s)")
    path = report.write()
    print0(f"\nspeedrun done in {time.perf_counter() - t_start:.1f}s; report: {path}")
    return rd


# ----------------------------------------------------------------------------- stages

def stage_world(ctx: dict, report: Report) -> None:
    p = ctx["preset"]
    wc = WorldConfig(seed=ctx["cfg"].seed, n_people=p["n_people"], n_bios_per_person=p["n_bios"],
                     known_fraction=p.get("known_fraction", 0.35), k1_fraction=p.get("k1_fraction", 0.175),
                     name_mentions=p.get("name_mentions", 0), qa_fraction=p.get("qa_fraction", 0.5),
                     n_problems=p["n_problems"], n_spelling=p["n_spelling"], n_filler_per_entity=p["n_filler"])
    world = build_world(wc)
    write_world(world, ctx["rd"])
    docs = world.corpus_documents()
    ctx["world"], ctx["docs"] = world, docs
    mb = sum(len(d["text"].encode()) for d in docs) / 1e6
    report.add("world", "\n".join([
        "## 1. The synthetic world (the embedded default corpus)", "",
        f"{len(world.people)} fictional people ({len(world.known)} known: their biographies are in the corpus; "
        f"{len(world.unknown)} unknown: never seen), {len(world.problems)} word/arithmetic problems, "
        f"{len(world.letters)} letter tasks. Corpus: {len(docs)} documents, {mb:.2f} MB "
        f"(synthetic, seed {ctx['cfg'].seed})."]))


def stage_crawl(ctx: dict, report: Report) -> None:
    warc, labels = make_crawl(ctx["docs"], ctx["rd"] / "crawl", seed=ctx["cfg"].seed)
    ctx["warc"], ctx["labels"] = warc, labels
    counts: dict[str, int] = {}
    for _, d in read_jsonl(labels, what="labels file"):
        counts[d["label"]] = counts.get(d["label"], 0) + 1
    report.add("crawl", "\n".join([
        "## 2. A synthetic crawl with ground truth", "",
        f"The corpus rendered as HTML pages with boilerplate and planted problems, written as a real "
        f"WARC.gz (`{Path(warc).name}`). Pages by label: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]))


def stage_data(ctx: dict, report: Report) -> None:
    dc = DataConfig(input=str(ctx["warc"]), run=str(ctx["rd"]), extractor=ctx["preset"]["extractor"], shards=False)
    stats = run_pipeline(dc)
    res = evaluate_filters(ctx["rd"], ctx["labels"])
    md = (ctx["rd"] / "data" / "data_report.md")
    funnel = md.read_text() if md.exists() else json.dumps(stats)[:2000]
    report.add("data", "\n".join([
        "## 3. Data curation (FineWeb-style, on datatrove)", "",
        f"Extractor: {dc.extractor}. Full funnel: `data/data_report.md`.", "",
        _demote_headings(funnel), "", "### Filters against the planted labels", "", format_eval(res)]))


def _clean_texts(rd: Path):
    return (d["text"] for d in iter_clean_docs(rd / "data"))


def stage_tokenizer(ctx: dict, report: Report) -> None:
    rd, p = ctx["rd"], ctx["preset"]
    t0 = time.perf_counter()
    tok = train_tokenizer(_clean_texts(rd), p["vocab_size"])
    secs = time.perf_counter() - t0
    tok.meta["train"] = {"corpus": str(rd / "data" / "docs"), "seconds": round(secs, 3), "trainer": "rustbpe"}
    tok.save(rd / "tokenizer")
    ctx["tok"] = tok
    texts = list(_clean_texts(rd))
    nbytes = sum(len(t.encode()) for t in texts)
    ntok = sum(len(x) for x in tok.encode_batch(texts))
    print0(f"tok stats: {len(texts)} docs, {nbytes} bytes, {ntok} tokens, {nbytes / ntok:.3f} bytes/token")
    report.add("tokenizer", "\n".join([
        "## 4. Tokenizer (byte-level BPE, Llama-3 split pattern)", "",
        f"Vocabulary {tok.n_vocab} (incl. specials), trained in {secs:.1f}s on the curated corpus: "
        f"{ntok} tokens for {nbytes} bytes = **{nbytes / ntok:.2f} bytes/token**."]))


def stage_shards(ctx: dict, report: Report) -> None:
    rd = ctx["rd"]
    tok = ctx.get("tok") or Tokenizer.load(rd / "tokenizer")
    stats = tokenize_corpus(tok, _clean_texts(rd), rd / "shards", val_fraction=0.02)
    report.add("shards", "\n".join([
        "## 5. Token shards", "",
        f"train: {stats['docs']['train']} docs, {stats['tokens']['train']} tokens; "
        f"val: {stats['docs']['val']} docs, {stats['tokens']['val']} tokens."]))


def stage_pretrain(ctx: dict, report: Report) -> None:
    rd, p, cfg = ctx["rd"], ctx["preset"], ctx["cfg"]
    lrs = {k: p[f"pretrain_{k}"] for k in ("lr", "muon_lr") if f"pretrain_{k}" in p}   # the preset's optimizer overrides
    pc = make_config(PretrainConfig, run=str(rd), depth=p["depth"], head_dim=p.get("head_dim", 64), seq_len=p["seq_len"],
                     device_batch_size=p["batch"],
                     max_steps=p["pretrain_steps"], time_budget=cfg.pretrain_seconds, seed=cfg.seed,
                     device=cfg.device, dtype=cfg.dtype, eval_every=max(30, p["pretrain_steps"] // 2),  # twice
                     log_every=10, **lrs)
    print_config(pc, "pretrain config")
    pretrain(pc)
    metrics = read_json(rd / "base" / "metrics.json", "pretrain metrics")["metrics"]
    ctx["pretrain_metrics"] = metrics
    rows = [[k, v] for k, v in metrics.items() if isinstance(v, (int, float, str))]
    report.add("pretrain", "\n".join([
        f"## 6. Pretraining (d{p['depth']}, {metrics.get('steps', p['pretrain_steps'])} steps on {get_device(cfg.device)})", "",
        md_table(["metric", "value"], rows), "", "![loss curve](report/pretrain_loss.png)"]))


def stage_sample(ctx: dict, report: Report) -> None:
    rd = ctx["rd"]
    ck = load_checkpoint(rd / "base")
    engine = Engine(ck.model, ck.tokenizer)
    world = ctx.get("world")
    prompts = []
    if world is not None and world.known:
        k = world.known[0]
        prompts.append(f"{k.name} was born in")
    prompts += ["The capital of", "Question: What is 7 plus 5?\nAnswer:"]
    lines = ["## 7. Samples from the base model (greedy, 24 tokens)", ""]
    for pr in prompts:
        ids = [ck.tokenizer.bos_id] + ck.tokenizer.encode(pr)
        toks, _ = engine.generate_batch(ids, num_samples=1, max_new_tokens=24, temperature=0.0)
        out = ck.tokenizer.decode(toks[0])
        print0(f"sample: {pr!r} -> {out!r}")
        lines.append(f"- `{pr}` → `{out.strip()[:200]}`")
    report.add("sample", "\n".join(lines))


# preset key -> SFTMix field (a key a preset leaves out keeps SFTMix's default)
MIX_KEYS = {"sft_math": "n_math_per_style", "sft_letters": "n_letters_per_style", "sft_identity": "n_identity",
            "sft_known_qa": "n_known_qa", "sft_idk": "n_idk", "sft_tool_drill": "n_tool_drill",
            "sft_worked_drill": "n_worked_drill", "mid_tool_drill": "mid_tool_drill", "mid_worked_drill": "mid_worked_drill"}


def stage_sft_data(ctx: dict, report: Report) -> None:
    rd, p = ctx["rd"], ctx["preset"]
    # Hundreds of tool traces per style: copying operands into a calculator call needs hundreds of
    # examples (120 gave 1% calculator accuracy, 600 gave 64%; dev/LOG.md); the drill adds thousands.
    summary = build_sft_data(rd, mix=SFTMix(**{name: p[key] for key, name in MIX_KEYS.items() if key in p}))
    report.add("sft_data", f"## SFT data\n\nConversations: {summary['train']} SFT ({summary['parts']}), "
                           f"{summary['mid']} midtraining drill, {summary['val']} validation (`sft_data/`).")


def stage_mid(ctx: dict, report: Report) -> None:
    """Midtraining (nanochat's mid stage): the base model drills tool calls and worked solutions on
    fresh chains in the chat format before SFT, so that the copying they need is learned once, by
    every SFT model of the run (the main one and the knowledge ablation start from it). Replayed windows
    of the run's pretraining tokens (``mid_replay``) keep the drill from overwriting the base's facts."""
    rd, p, cfg = ctx["rd"], ctx["preset"], ctx["cfg"]
    if not p.get("mid_steps") or not (rd / "sft_data" / "mid.jsonl").exists():
        print0("mid: no midtraining in this preset (SFT starts from the base model)")
        return
    path = sft(SFTConfig(run=str(rd), out="mid", data=str(rd / "sft_data" / "mid.jsonl"), max_steps=p["mid_steps"],
                         replay=p.get("mid_replay", 0), seed=cfg.seed, device=cfg.device, dtype=cfg.dtype, eval_every=0))
    m = read_json(path / "state.json", "midtraining checkpoint")["metrics"]
    report.add("mid", f"## Midtraining\n\n{m['steps']} steps on {p.get('mid_tool_drill', 0)} calculator traces and "
                      f"{p.get('mid_worked_drill', 0)} worked solutions of fresh chains (never a test expression), with "
                      f"{p.get('mid_replay', 0)} replayed windows of pretraining text; "
                      f"train loss {m['train_loss']:.4f}, {m['seconds']:.0f}s. SFT starts from `{path}`.")


def stage_sft(ctx: dict, report: Report) -> None:
    rd, p, cfg = ctx["rd"], ctx["preset"], ctx["cfg"]
    # a mid/ folder here is this run's (a new run clears the old one; --resume keeps it on purpose)
    init = rd / "mid" if (rd / "mid").exists() else ""
    sft(SFTConfig(run=str(rd), init=str(init), max_steps=p["sft_steps"], time_budget=cfg.sft_seconds, seed=cfg.seed,
                  device=cfg.device, dtype=cfg.dtype))
    report.add("sft", run_experiments(rd, device=cfg.device, n_reason=p["n_reason"]))


def stage_rl(ctx: dict, report: Report) -> None:
    p = ctx["preset"]
    cfg = ctx["cfg"]
    device = get_device(cfg.device)
    md, metrics = run_rl_stage(ctx["rd"], steps=p["rl_steps"], budget_s=cfg.rl_seconds, device=device,
                               eval_problems=p["n_eval_rl"], group_size=p["rl_group"], screen=p["rl_screen"],
                               max_new_tokens=p["rl_tokens"], lr=p["rl_lr"], dtype=cfg.dtype,
                               **({"kl_coef": p["rl_kl"]} if "rl_kl" in p else {}))
    report.add("rl", md)
    if p["bon_prompts"]:  # preferences: RM on the SFT model's own replies, best-of-N, DPO
        md, _ = run_preference_stage(ctx["rd"], device=device, n_prompts=p["rm_prompts"], n_bon=p["bon_prompts"],
                                     ns=tuple(2 ** i for i in range(p["bon_max_n"].bit_length())),  # 1, 2, 4, ..
                                     eval_problems=p["n_eval_rl"], max_new_tokens=p["rl_tokens"],
                                     sft_outcomes=metrics["sft_outcomes"])   # the same SFT measurement, not redone
        report.add("preferences", md)


def stage_rlhf(ctx: dict, report: Report) -> None:
    md, metrics = run_rlhf_stage(ctx["rd"], device=get_device(ctx["cfg"].device))
    report.add("rlhf", md)


def stage_arena(ctx: dict, report: Report) -> None:
    cfg = ctx["cfg"]
    md, _ = run_arena(ArenaConfig(run=str(ctx["rd"]), n_per_kind=ctx["preset"]["n_arena"], seed=cfg.seed,
                                  device=cfg.device))
    report.add("arena", marked_section("arena", md))   # markers: `chatforge arena` later replaces it in place


def _demote_headings(md: str) -> str:
    """Nest a stage's own markdown report under the report card's section heading."""
    return "\n".join(("###" + line.lstrip("#") if line.startswith("#") else line) for line in md.splitlines())


def cli(argv: list[str]) -> None:
    parser = make_parser("chatforge speedrun", __doc__.splitlines()[0])
    add_config_args(parser, SpeedrunConfig)
    args = parser.parse_args(argv)
    cfg = config_from_args(SpeedrunConfig, args)
    print_config(cfg, "speedrun config")
    speedrun(cfg)
