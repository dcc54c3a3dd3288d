"""The one entry point: ``chatforge <command> [flags]``.

Each command is a thin wrapper that lives beside its stage as ``cli(argv)`` in the module named
here; modules are imported lazily so ``chatforge --help`` stays fast and a broken optional stage
does not break the others.
"""
from __future__ import annotations

import importlib
import sys

from chatforge.common import __version__, CfError


# command -> (module, one-line help). Order is the order of the pipeline.
COMMANDS: dict[str, tuple[str, str]] = {
    "world": ("chatforge.world.build", "generate the synthetic world (people, problems) and its corpus"),
    "data": ("chatforge.data.curate", "curate web data: WARC/HTML -> extract -> filter -> dedup -> PII -> shards"),
    "tok": ("chatforge.tokenizer.tokenizer", "BPE tokenizer: train | encode | decode | show | stats"),
    "pretrain": ("chatforge.train.pretrain", "pretrain a base model on token shards"),
    "sample": ("chatforge.model.engine", "sample completions from a checkpoint"),
    "sft": ("chatforge.train.sft", "supervised fine-tuning on conversations"),
    "rm": ("chatforge.rl.reward", "train a reward model on preference pairs"),
    "rl": ("chatforge.rl.grpo", "reinforcement learning (GRPO / RLHF)"),
    "dpo": ("chatforge.rl.dpo", "direct preference optimization"),
    "eval": ("chatforge.eval.experiments", "evaluate a checkpoint"),
    "inspect": ("chatforge.model.inspect", "look inside a checkpoint: logit lens, attention maps, residual stream"),
    "arena": ("chatforge.eval.arena", "rank the run's models against each other (Bradley–Terry, bootstrap intervals)"),
    "chat": ("chatforge.serve.chat", "chat with a model in the terminal"),
    "serve": ("chatforge.serve.server", "OpenAI-compatible API server and web UI"),
    "import": ("chatforge.model.hf", "import a transformers checkpoint"),
    "export": ("chatforge.serve.export", "export a checkpoint to HF or GGUF"),
    "speedrun": ("chatforge.speedrun", "run every stage on the embedded default and write report.md"),
}

# "<command> <subcommand>" pairs served by a module of their own: -> (module, function)
SUBCOMMANDS: dict[tuple[str, str], tuple[str, str]] = {
    ("data", "fetch"): ("chatforge.data.fetch", "cli"),                 # hub downloads (FineWeb, SmolTalk, ...)
    ("data", "tokenize"): ("chatforge.data.pretokenize", "cli"),        # parquet/JSONL -> shards, in parallel
    ("eval", "fetch"): ("chatforge.data.fetch", "eval_fetch_cli"),      # the CORE eval bundle
}


def usage() -> str:
    lines = ["usage: chatforge <command> [flags]   (chatforge <command> --help for its flags)", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[0] in ("-V", "--version"):
        print(f"chatforge {__version__}")
        return
    cmd = argv[0]
    if cmd not in COMMANDS:
        sys.stderr.write(f"chatforge: error: unknown command '{cmd}'; expected one of {', '.join(COMMANDS)}\n")
        sys.exit(2)
    module_name, fn, rest = COMMANDS[cmd][0], "cli", argv[1:]
    if tuple(argv[:2]) in SUBCOMMANDS:
        (module_name, fn), rest, cmd = SUBCOMMANDS[(argv[0], argv[1])], argv[2:], " ".join(argv[:2])
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("chatforge"):
            sys.stderr.write(f"chatforge: error: command '{cmd}' is not available yet ({e.name} missing)\n")
            sys.exit(2)
        raise
    try:
        getattr(module, fn)(rest)
    except CfError as e:
        sys.stderr.write(f"chatforge {cmd}: error: {e}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
