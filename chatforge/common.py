"""Shared plumbing: errors, atomic files, JSON/JSONL readers, run directories, typed configs, logging, devices.

Everything else in chatforge imports from here; this module imports nothing of chatforge.

Run directory layout (``runs/<name>/``), one folder per stage; stages talk only through files, and a
new speedrun clears these folders of a previous run first (``--resume`` keeps them):

    world/         the synthetic world (world.json: people, problems, letters, identity) + corpus/ pages
    crawl/         crawl.warc.gz + labels.jsonl (the planted defects' ground truth)
    data/          curated docs/*.jsonl.gz, removed/<step>/ with reasons, data_report.md, funnel.png
    tokenizer/     ranks.tiktoken + tokenizer.json (our metadata) [+ hf/ export]
    shards/        train_*.bin / val_*.bin token shards + shards.json
    base/          pretraining checkpoints  step_XXXXXX/{model.safetensors, optim.pt, state.json, tokenizer/}
    sft_data/      SFT conversations (train/val/ablation JSONL) and the held-out evaluation items
    sft/ sft_*/    SFT checkpoints (the main model and the ablations the experiments need)
    rl/ rm/ rlhf/ dpo/   later stages' checkpoints, same format
    eval/ arena/   evaluation outputs and arena battles / votes
    report.md      the report card;  results.json  every measured claim (report.py);  report/  figures

Every artifact carries a small JSON with its config and provenance (see ``write_meta``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gzip
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import types
import typing
from pathlib import Path
from typing import Any, Iterator

import matplotlib.pyplot as plt
import numpy as np


__version__ = "0.1.0"


# ----------------------------------------------------------------------------- shared data

def data_dir(*parts: str) -> Path:
    """The folder of downloaded evaluation/benchmark data (GSM8K, HellaSwag, HH-RLHF, ...), joined with ``parts``.

    ``CHATFORGE_DATA`` overrides it (point it at your own downloads, e.g. from ``chatforge eval fetch``);
    the default is ``../shared/data`` beside the checkout, the layout of the development machines.
    Resolved at call time, so tests and users can set the variable after import.
    """
    root = os.environ.get("CHATFORGE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(root).joinpath(*parts)


# ----------------------------------------------------------------------------- errors

class CfError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits 1.

    The message should name the file/field and say what was expected.
    """


# ----------------------------------------------------------------------------- atomic files

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, replace_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``.

    On any exception the temporary file (or folder) is removed and ``path`` is untouched,
    so a crash never leaves a half-written artifact. A folder written onto an existing folder
    replaces only the entries it contains (each one renamed into place): files the caller did not
    write are never deleted, unless ``replace_dir`` (a stage replacing its own step folder).
    Files come out mode 0644, folders 0755 (some writers, e.g. safetensors, create 0600 files).
    OS errors at the path (``/proc/x``, ``/dev/null/x``, read-only folders) become one-line CfErrors.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(tmp_name)  # the caller creates a file or a folder at tmp
    except OSError as e:
        raise CfError(f"{path}: cannot write there ({e.strerror or e})") from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        try:
            _publish_modes(tmp)
            if tmp.is_dir() and path.is_dir() and not path.is_symlink() and not replace_dir:
                _merge_into(tmp, path)
            else:
                if replace_dir and tmp.is_dir() and path.is_dir():
                    _rmtree(path)
                os.replace(tmp, path)
        except OSError as e:
            raise CfError(f"{path}: cannot write there ({e.strerror or e})") from None
    except BaseException:
        if tmp.is_dir():
            _rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()
        raise


def _rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


def _publish_modes(p: Path) -> None:
    for q in [p, *p.rglob("*")] if p.is_dir() else [p]:
        if not q.is_symlink():
            os.chmod(q, 0o755 if q.is_dir() else 0o644)


def _merge_into(src: Path, dst: Path) -> None:
    """Move every entry of folder ``src`` into folder ``dst`` (same-named entries are replaced,
    sub-folders merged the same way, nothing else in ``dst`` is touched), then remove ``src``."""
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and target.is_dir() and not target.is_symlink():
            _merge_into(entry, target)
        elif target.is_dir() and not target.is_symlink():
            raise CfError(f"{target}: is a folder; expected a file or nothing (remove it first)")
        else:
            os.replace(entry, target)
    src.rmdir()


def check_out_dir(path: str | os.PathLike, force: bool, flag: str = "--out") -> Path:
    """An output folder must be new or empty unless ``--force``; even then only the files the command
    writes are replaced (atomic_path merges), so ``--out .`` can never wipe a working directory."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise CfError(f"{flag} {path}: exists and is not a folder")
        if path.is_dir() and not force and any(path.iterdir()):
            raise CfError(f"{flag} {path}: folder is not empty; pass --force to write into it "
                          "(only the files this command writes are replaced)")
    except OSError as e:
        raise CfError(f"{flag} {path}: cannot use it ({e.strerror or e})") from None
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read JSON with a one-line error naming the file on any problem."""
    path = Path(path)
    if not path.exists():
        raise CfError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CfError(f"{path}: corrupt {what}, expected JSON ({e})") from None


def _open_maybe_gz(path: Path) -> typing.BinaryIO:
    """A binary handle on ``path``; ``*.gz`` is decompressed on the fly."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_jsonl(path: str | os.PathLike, limit: int | None = None,
               what: str = "file") -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) from a ``.jsonl`` or ``.jsonl.gz`` file, at most ``limit`` objects.

    The one JSONL reader of chatforge. Blank lines are skipped; invalid UTF-8, invalid JSON and
    lines that are not JSON objects raise a one-line CfError naming ``file:line``. Lines are decoded
    one at a time (not through a text wrapper) so a bad byte is blamed on its own line.
    """
    path = Path(path)
    if not path.is_file():
        raise CfError(f"{path}: {what} not found")
    n = 0
    if limit is not None and limit <= 0:
        return
    with _open_maybe_gz(path) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CfError(f"{path}:{lineno}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CfError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise CfError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj
            n += 1
            if limit is not None and n >= limit:  # stop without reading (or blaming) the next line
                return


# ----------------------------------------------------------------------------- provenance

def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def provenance() -> dict[str, Any]:
    return {
        "chatforge_version": __version__,
        "git_sha": git_sha(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "argv": sys.argv,
    }


def write_meta(path: str | os.PathLike, kind: str, config: Any, **extra: Any) -> None:
    """Write an artifact's small JSON: what it is, the config that made it, and provenance."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    atomic_write_json(path, {"kind": kind, "config": config, **extra, "provenance": provenance()})


def run_dir(name_or_path: str | os.PathLike, root: str | os.PathLike = "runs") -> Path:
    """``runs/<name>`` for a bare name, the path itself when it contains a separator."""
    p = Path(name_or_path)
    if len(p.parts) == 1 and not p.is_absolute():
        p = Path(root) / p
    return p


# ----------------------------------------------------------------------------- typed configs

def _nested(cls: type) -> dict[str, type]:
    """Fields of ``cls`` that are themselves dataclasses (e.g. ``optim: OptimConfig``): their fields are
    flat flags/keys of ``cls`` (``--lr``, not ``--optim.lr``), so every stage spells them the same."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def make_config(cls: type, base: Any = None, where: str = "config", **flat: Any) -> Any:
    """Dataclass ``cls`` (or a copy of ``base``) with ``flat`` fields set; a nested config's fields may
    be given flat or as a dict under its own name. Unknown keys fail loudly, naming ``where``."""
    nested = _nested(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    inner = {k: {f.name for f in dataclasses.fields(t)} for k, t in nested.items()}
    top: dict[str, Any] = {}
    sub: dict[str, dict[str, Any]] = {k: {} for k in nested}
    for k, v in flat.items():
        if k in nested and isinstance(v, dict):
            sub[k].update(v)
        elif k in names:
            top[k] = v
        elif (owner := next((n for n, fs in inner.items() if k in fs), None)) is not None:
            sub[owner][k] = v
        else:
            expected = sorted(names - set(nested) | {x for fs in inner.values() for x in fs})
            raise CfError(f"{where}: unknown key {k!r} for {cls.__name__}; expected some of {expected}")
    obj = base if base is not None else cls()
    for k, fields_ in sub.items():
        if fields_ and k not in top:
            unknown = set(fields_) - inner[k]
            if unknown:
                raise CfError(f"{where}: unknown key(s) {sorted(unknown)} for {nested[k].__name__}")
            top[k] = dataclasses.replace(getattr(obj, k), **fields_)
    return dataclasses.replace(obj, **top)


def config_from_dict(cls: type, d: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a dict (nested configs as dicts or flat); unknown keys fail loudly."""
    return make_config(cls, where=where, **d)


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    t = hints[f.name]
    origin = typing.get_origin(t)
    if origin is typing.Union or origin is types.UnionType:  # Optional[X] / X | None -> X
        args = [a for a in typing.get_args(t) if a is not type(None)]
        t = args[0] if len(args) == 1 else str
    return t


class _Deprecated(argparse.Action):
    """An old flag spelling kept for one release: stores into the new field and says so once."""
    def __call__(self, parser, namespace, values, option_string=None):
        new = "--" + self.dest.replace("_", "-")
        sys.stderr.write(f"chatforge: {option_string} is deprecated and will be removed; use {new}\n")
        setattr(namespace, self.dest, values)


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                    defaults: Any = None) -> None:
    """Add one ``--flag`` per dataclass field; help text comes from ``field(metadata={"help": ...})``.

    A nested config field (``optim: OptimConfig``) adds its fields as flat flags, with this stage's
    defaults. ``metadata={"deprecated": ["--old-name"]}`` keeps old spellings working with a warning.
    """
    nested = _nested(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        if defaults is not None:
            default = getattr(defaults, f.name)
        if f.name in nested:
            add_config_args(parser, nested[f.name], skip, defaults=default)
            continue
        t = _field_type(cls, f)
        flag = "--" + f.name.replace("_", "-")
        # argparse %-formats help strings: a literal "95%" must reach it as "95%%"
        helptext = (f.metadata.get("help", "") + f" (default: {default})").replace("%", "%%")
        if t is bool:
            kw: dict[str, Any] = dict(action=argparse.BooleanOptionalAction)
        elif t in (int, float, str):
            kw = dict(type=t, choices=f.metadata.get("choices"))
        else:  # lists and other structured values come as JSON on the command line
            kw, helptext = dict(type=json.loads), helptext + " [JSON]"
        parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=helptext, **kw)
        for old in f.metadata.get("deprecated", ()):
            parser.add_argument(old, dest=f.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                                action=_Deprecated, **{k: v for k, v in kw.items() if k != "action"})


def config_from_args(cls: type, args: argparse.Namespace, base: Any = None, **overrides: Any) -> Any:
    """Dataclass from parsed args: fields given on the command line override ``base`` (or defaults).
    Flags that are not fields of ``cls`` (or of its nested configs) are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    for t in _nested(cls).values():
        names |= {f.name for f in dataclasses.fields(t)}
    given = {k: v for k, v in vars(args).items() if k in names}
    return make_config(cls, base=base, **{**given, **overrides})


def print_config(cfg: Any, title: str = "config") -> None:
    print0(f"{title}: " + json.dumps(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg,
                                     default=_json_default))


# ----------------------------------------------------------------------------- CLI helpers

class CliParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line and exits 2."""
    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def make_parser(prog: str, description: str) -> CliParser:
    return CliParser(prog=prog, description=description,
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)


# ----------------------------------------------------------------------------- logging and ranks

def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def print0(*a: Any, **kw: Any) -> None:
    if rank() == 0:
        print(*a, **kw, flush=True)


def banner(msg: str) -> None:
    """A loud notice, e.g. when a slow fallback path is taken."""
    if rank() == 0:
        line = "!" * min(100, max(40, len(msg) + 8))
        print(f"{line}\n!!! {msg}\n{line}", file=sys.stderr, flush=True)


class Timer:
    """Wall-clock timer for stages: ``with Timer("tokenizer") as t: ...; t.seconds``."""
    def __init__(self, name: str, quiet: bool = False):
        self.name, self.quiet, self.seconds = name, quiet, 0.0

    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0
        if not self.quiet:
            print0(f"[time] {self.name}: {self.seconds:.1f}s")


# ----------------------------------------------------------------------------- statistics

def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval (Wilson 1927) for k successes out of n (n = 0 -> the uninformative (0, 1))."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k} n={n}")
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # k = 0 and k = n touch 0 and 1 exactly; in floats center + half came out 1 - 1e-16, below the
    # rate itself, and an error bar of -1e-14 stopped a plot
    return 0.0 if k == 0 else max(0.0, center - half), 1.0 if k == n else min(1.0, center + half)


def paired_bootstrap(a: typing.Sequence[float], b: typing.Sequence[float], clusters: typing.Sequence[Any] | None = None,
                     n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired items and its percentile bootstrap interval (Efron 1979).

    ``a[i]`` and ``b[i]`` are two conditions' scores on the *same* item i (e.g. 0/1 correct), so the
    pairing removes the items' own difficulty from the noise. ``clusters[i]`` groups items that are not
    independent (several questions about one person): the bootstrap then resamples whole clusters, as
    the unit of sampling must be. Pure: the RNG is seeded here, so the interval is reproducible.
    Returns (delta, lo, hi).
    """
    if len(a) != len(b):
        raise ValueError(f"paired_bootstrap: {len(a)} vs {len(b)} scores; pairs must match")
    if not a:
        return float("nan"), float("nan"), float("nan")
    sums, counts = _cluster_sums([float(x) - float(y) for x, y in zip(a, b)],
                                 list(clusters) if clusters is not None else list(range(len(a))))
    rng = random.Random(seed)
    m = len(sums)

    def draw() -> float:
        idx = [rng.randrange(m) for _ in range(m)]
        return sum(sums[i] for i in idx) / sum(counts[i] for i in idx)
    return (sum(sums) / sum(counts), *_percentile_interval([draw() for _ in range(n_boot)], level))


def independent_bootstrap(a: typing.Sequence[float], clusters_a: typing.Sequence[Any], b: typing.Sequence[float],
                          clusters_b: typing.Sequence[Any], n_boot: int = 2000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float, float]:
    """mean(a) - mean(b) for two groups of *different* clusters (e.g. two groups of people), with a
    percentile bootstrap interval that resamples the clusters of each group independently (an
    unpaired comparison; ``paired_bootstrap`` is the one for two conditions on the same items).
    Returns (delta, lo, hi)."""
    if not a or not b:
        return float("nan"), float("nan"), float("nan")
    (sa, na), (sb, nb) = _cluster_sums(a, clusters_a), _cluster_sums(b, clusters_b)
    rng = random.Random(seed)

    def mean_of_draw(sums: list[float], counts: list[int]) -> float:
        idx = [rng.randrange(len(sums)) for _ in sums]
        return sum(sums[i] for i in idx) / sum(counts[i] for i in idx)
    stats = [mean_of_draw(sa, na) - mean_of_draw(sb, nb) for _ in range(n_boot)]
    return (sum(a) / len(a) - sum(b) / len(b), *_percentile_interval(stats, level))


def _cluster_sums(values: typing.Sequence[float], clusters: typing.Sequence[Any]) -> tuple[list[float], list[int]]:
    """Per cluster (in first-seen order): the sum of its values and its item count."""
    groups: dict[Any, list[float]] = {}
    for k, x in zip(clusters, values):
        groups.setdefault(k, []).append(float(x))
    return [sum(v) for v in groups.values()], [len(v) for v in groups.values()]


def _percentile_interval(stats: list[float], level: float) -> tuple[float, float]:
    """The percentile bootstrap interval of the statistic's bootstrap draws."""
    stats = sorted(stats)
    n = len(stats)
    return stats[int((1 - level) / 2 * n)], stats[min(n - 1, int((1 + level) / 2 * n))]


# ----------------------------------------------------------------------------- devices and seeds

def seed_all(seed: int) -> None:
    random.seed(seed)
    try:
        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    import torch  # lazy: data stages and `chatforge --help` import common without torch
    torch.manual_seed(seed)


def get_device(name: str = "auto") -> str:
    """'auto' picks cuda, then mps, then cpu."""
    import torch  # lazy: data stages and `chatforge --help` import common without torch
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (Intel AMX or AVX512-BF16, read from /proc/cpuinfo).

    There, bf16 autocast trains a d4-d8 model 2.3-2.6x faster than fp32 (dev/LOG.md); elsewhere
    CPU bf16 is emulated and slower, so training stays fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))


def machine_info(device: str, dtype: str = "auto") -> dict[str, Any]:
    """What the report prints about the machine: CPU model, native bf16, threads, device, training dtype."""
    import torch  # lazy: data stages and `chatforge --help` import common without torch
    cpu = "unknown"
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
                    if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "native bf16": cpu_has_bf16(), "torch threads": torch.get_num_threads(),
            "device": device, "training dtype": train_dtype(device, dtype)}


@functools.lru_cache(maxsize=None)
def train_dtype(device: str, dtype: str = "auto") -> str:
    """Resolve a training ``dtype`` flag: 'auto' = bf16 autocast on CUDA with bf16 and on CPUs with
    native bf16, fp32 otherwise (with a banner on CPU: the slow path). Inference keeps fp32 on CPU
    (``autocast_ctx``'s own 'auto'): batch-1 decoding gains little and parity tests stay exact.
    Cached: the answer depends only on the hardware, and a caller inside a training loop (the RL
    update) must not print the banner every step."""
    if dtype != "auto":
        return dtype
    import torch  # lazy: data stages and `chatforge --help` import common without torch
    dev_type = device.split(":")[0]
    if dev_type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if dev_type == "cpu" and cpu_has_bf16():
        return "bfloat16"
    if dev_type == "cpu":
        banner("this CPU has no native bf16 (AMX / AVX512-BF16): training in fp32, ~2.3x slower")
    return "float32"


def autocast_ctx(device: str, dtype: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (and on CPUs when asked); fp32 otherwise (the reference path)."""
    import torch  # lazy: data stages and `chatforge --help` import common without torch
    dev_type = device.split(":")[0]
    if dtype == "auto":
        dtype = "bfloat16" if dev_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev_type, dtype=getattr(torch, dtype))


def is_interactive() -> bool:
    return sys.stderr.isatty() and os.environ.get("CI") is None
