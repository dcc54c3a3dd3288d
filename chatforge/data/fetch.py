"""``chatforge data fetch`` and ``chatforge eval fetch``: real data from the Hugging Face hub.

    chatforge data fetch --dataset fineweb-edu --sample 10BT --shards 4 --run web   # -> runs/web/raw/fineweb-edu/
    chatforge data fetch --dataset smoltalk --run web                               # SFT conversations
    chatforge eval fetch                                                            # CORE eval bundle -> $CHATFORGE_DATA

Every file is listed first (path, size and, for LFS files, the SHA-256 the hub records), then
downloaded with ``huggingface_hub`` into the target folder: an interrupted download resumes where it
stopped (the hub client keeps the partial file), a progress bar shows, ``HF_TOKEN`` is used when set
(gated sets), and ``HF_HUB_OFFLINE=1`` or no network gives a one-line error. After download every
file's size and SHA-256 are checked against the listing; a mismatch deletes the file and fails. A
verified file is recorded in ``fetch.json`` beside the data and is not downloaded or hashed again.

The hub is reached only through ``Hub`` (``list_files`` and ``download``): tests pass a fake backed
by a local folder, so nothing downloads in tests.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from chatforge.common import (CfError, atomic_path, atomic_write_json, data_dir, make_parser, print0, read_json,
                              run_dir)


@dataclass(frozen=True)
class Source:
    repo: str            # hub dataset repository
    folder: str          # folder in the repo; "{sample}" is replaced by --sample
    pattern: str         # file-name glob inside that folder
    default_sample: str
    purpose: str


DATASETS: dict[str, Source] = {
    # FineWeb (Penedo et al. 2024): samples 10BT, 100BT, 350BT; ~2.1 GB parquet files, text column "text"
    "fineweb-edu": Source("HuggingFaceFW/fineweb-edu", "sample/{sample}", "*.parquet", "10BT", "pretraining"),
    "fineweb": Source("HuggingFaceFW/fineweb", "sample/{sample}", "*.parquet", "10BT", "pretraining"),
    # SmolTalk (Allal et al. 2025), nanochat's SFT data: subsets "all", "smol-magpie-ultra", ...; column "messages"
    "smoltalk": Source("HuggingFaceTB/smoltalk", "data/{sample}", "train-*.parquet", "all", "sft"),
    # OpenAssistant OASST1 (Kopf et al. 2023): the reviewed conversation trees (convo.load_oasst reads them)
    "oasst": Source("OpenAssistant/oasst1", "", "*_oasst_ready.trees.jsonl.gz", "", "sft"),
}

# nanochat's copy of the DCLM eval bundle (core.yaml, eval_meta_data.csv, eval_data/<category>/*.jsonl)
EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"


@dataclass(frozen=True)
class RemoteFile:
    path: str                  # path in the repository
    size: int
    sha256: str | None         # LFS files carry one; small git files do not


class Hub(Protocol):
    def list_files(self, repo: str, folder: str) -> list[RemoteFile]: ...
    def download(self, repo: str, path: str, local_dir: Path) -> Path: ...


def _offline_error(what: str, e: Exception) -> CfError:
    if type(e).__name__ in ("GatedRepoError", "RepositoryNotFoundError"):
        return CfError(f"{what}: not accessible ({type(e).__name__}); a gated or private set needs HF_TOKEN")
    detail = " ".join(str(e).split())[:160]
    return CfError(f"{what}: cannot reach the Hugging Face hub ({type(e).__name__}: {detail}); check the "
                   f"network, or unset HF_HUB_OFFLINE")


class HfHub:
    """The real hub, through huggingface_hub (it reads HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE)."""

    def __init__(self) -> None:
        # lazy import on purpose: only fetching needs the hub client
        from huggingface_hub import HfApi
        self.api = HfApi(token=os.environ.get("HF_TOKEN") or None)

    def list_files(self, repo: str, folder: str) -> list[RemoteFile]:
        try:
            entries = list(self.api.list_repo_tree(repo, folder or None, repo_type="dataset", recursive=False))
        except Exception as e:  # offline, DNS, HTTP, gated: all end the command with one line
            raise _offline_error(f"{repo}/{folder}", e) from None
        return [RemoteFile(f.path, int(f.size), f.lfs.sha256 if getattr(f, "lfs", None) else None)
                for f in entries if hasattr(f, "size")]  # RepoFolder entries have no size

    def download(self, repo: str, path: str, local_dir: Path) -> Path:
        from huggingface_hub import hf_hub_download  # lazy import, as in __init__
        try:
            return Path(hf_hub_download(repo, path, repo_type="dataset", local_dir=local_dir,
                                        token=os.environ.get("HF_TOKEN") or None))
        except Exception as e:
            raise _offline_error(f"{repo}/{path}", e) from None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, rf: RemoteFile) -> str | None:
    """None when ``path`` matches the listing's size and SHA-256, else what is wrong."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size != rf.size:
        return f"size {path.stat().st_size:,} bytes, expected {rf.size:,}"
    if rf.sha256 and sha256_file(path) != rf.sha256:
        return "SHA-256 differs from the hub's"
    return None


def select_files(files: list[RemoteFile], pattern: str, shards: int | None) -> list[RemoteFile]:
    picked = sorted((f for f in files if fnmatch.fnmatch(Path(f.path).name, pattern)), key=lambda f: f.path)
    return picked[:shards] if shards else picked


def fetch_dataset(name: str, out: Path, sample: str | None = None, shards: int | None = None,
                  hub: Hub | None = None) -> dict[str, Any]:
    """Download (and verify) the first ``shards`` files of a dataset sample into ``out``."""
    if name not in DATASETS:
        raise CfError(f"--dataset: unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if shards is not None and shards < 1:
        raise CfError(f"--shards: expected a positive number of files, got {shards}")
    src = DATASETS[name]
    folder = src.folder.format(sample=sample or src.default_sample)
    hub = hub or HfHub()
    files = select_files(hub.list_files(src.repo, folder), src.pattern, shards)
    if not files:
        raise CfError(f"{src.repo}/{folder}: no files matching {src.pattern} (is --sample right?)")
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "fetch.json"
    done = read_json(manifest_path, "fetch manifest").get("files", {}) if manifest_path.exists() else {}
    total = sum(f.size for f in files)
    print0(f"fetch: {name} {folder or '/'}: {len(files)} file(s), {total / 1e9:.2f} GB -> {out}")
    for rf in files:
        local = out / rf.path
        if done.get(rf.path) == asdict(rf) and local.is_file() and local.stat().st_size == rf.size:
            continue  # verified on an earlier run
        problem = verify(local, rf)
        if problem is not None:
            path = hub.download(src.repo, rf.path, out)
            problem = verify(path, rf)
            if problem is not None:
                path.unlink(missing_ok=True)  # never leave a file that looks complete but is not
                raise CfError(f"{rf.path}: downloaded file failed verification ({problem}); run again to retry")
        done[rf.path] = asdict(rf)
        atomic_write_json(manifest_path, {"dataset": name, "repo": src.repo, "folder": folder, "files": done})
    return {"dataset": name, "repo": src.repo, "folder": folder, "out": str(out), "files": [f.path for f in files],
            "bytes": total, "purpose": src.purpose}


# ----------------------------------------------------------------------------- eval bundle

def fetch_eval_bundle(dest: Path, url: str = EVAL_BUNDLE_URL, opener: Any = None) -> Path:
    """Download nanochat's eval bundle zip (resuming a partial download) and unpack it into
    ``dest/eval_bundle``. The CORE loader finds task files anywhere under the data folder."""
    opener = opener or urllib.request.urlopen
    target = dest / "eval_bundle"
    if (target / "core.yaml").exists():
        print0(f"eval fetch: {target} already present")
        return target
    dest.mkdir(parents=True, exist_ok=True)
    part = dest / "eval_bundle.zip.part"
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with opener(req) as r, open(part, "ab" if have and getattr(r, "status", 200) == 206 else "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    except OSError as e:
        raise CfError(f"{url}: download failed ({type(e).__name__}: {e}); run again to resume") from None
    try:
        with zipfile.ZipFile(part) as z, atomic_path(target) as tmp:
            bad = z.testzip()
            if bad is not None:
                raise CfError(f"{part}: corrupt member {bad}; delete it and run again")
            z.extractall(tmp)
            inner = tmp / "eval_bundle"  # the zip holds one top folder
            if inner.is_dir():
                for p in inner.iterdir():
                    p.rename(tmp / p.name)
                inner.rmdir()
    except zipfile.BadZipFile:
        part.unlink()
        raise CfError(f"{url}: not a zip file (partial download removed); run again") from None
    part.unlink()
    return target


# ----------------------------------------------------------------------------- CLI

def cli(argv: list[str]) -> None:
    p = make_parser("chatforge data fetch", "download a FineWeb / FineWeb-Edu sample or SFT data from the HF hub")
    p.add_argument("--dataset", default="fineweb-edu", choices=list(DATASETS))
    p.add_argument("--sample", default=None, help="sample / subset (fineweb*: 10BT, 100BT, 350BT; smoltalk: all, ...)")
    p.add_argument("--shards", type=int, default=None, help="download only the first N files (default: all)")
    p.add_argument("--run", default="default", help="run name or path: files go to <run>/raw/<dataset>/")
    p.add_argument("--out", default="", help="folder to download into (overrides <run>/raw/<dataset>)")
    a = p.parse_args(argv)
    out = Path(a.out) if a.out else run_dir(a.run) / "raw" / a.dataset
    res = fetch_dataset(a.dataset, out, a.sample, a.shards)
    print0(f"fetch: {len(res['files'])} verified file(s), {res['bytes'] / 1e9:.2f} GB in {res['out']}")


def eval_fetch_cli(argv: list[str]) -> None:
    p = make_parser("chatforge eval fetch", "download the CORE eval bundle into the data folder ($CHATFORGE_DATA)")
    p.add_argument("--dest", default="", help="folder to unpack into (default: $CHATFORGE_DATA or ../shared/data)")
    p.add_argument("--url", default=EVAL_BUNDLE_URL)
    a = p.parse_args(argv)
    target = fetch_eval_bundle(Path(a.dest) if a.dest else data_dir(), a.url)
    print0(f"eval fetch: CORE data in {target}; `chatforge eval --suite core` finds it through CHATFORGE_DATA")
