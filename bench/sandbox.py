"""Sandbox benchmark: the latency of one python tool call against a bare interpreter start.

    .venv/bin/python bench/sandbox.py [--repeats 9]

Reference, measured in the same process so machine load cancels: ``python -I -S -B -c CODE`` in a
subprocess (what any process-per-call sandbox pays). Then ``run_python`` with the OS wall (namespaces,
minimal root, uid nobody, seccomp) and the audit hook, and with the tripwire only (``--unsafe-python``
path, isolation skipped by a capability-less child). Medians of ``--repeats``; ratios against the
bare start. The code is SFT's letter-counting program (what the SFT/eval tool paths run).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chatforge.assistant import sandbox  # noqa: E402
from chatforge.assistant.convo import letter_count_python  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    code = letter_count_python("strawberry", "r")
    cfg = sandbox.SandboxConfig()

    def bare():
        subprocess.run([sys.executable, "-I", "-S", "-B", "-c", code], capture_output=True, check=True)

    def walled():
        assert sandbox.run_python(code, cfg).ok

    rows = [("bare interpreter start (reference)", median_ms(bare, args.repeats))]
    rows.append(("run_python: OS wall + audit hook", median_ms(walled, args.repeats)))
    setpriv = shutil.which("setpriv")
    if setpriv:  # a child without capabilities and no user namespace: the --unsafe-python path
        plain = sandbox._child_cmd
        sandbox._child_cmd = lambda limits: [setpriv, "--bounding-set=-all", *plain(limits)]
        unsafe = sandbox.SandboxConfig(unsafe_python=True, user_namespace=False)
        rows.append(("run_python: audit hook only (--unsafe-python)",
                     median_ms(lambda: sandbox.run_python(code, unsafe), args.repeats)))
        sandbox._child_cmd = plain
    ref = rows[0][1]
    for name, ms in rows:
        print(f"{name:<48} {ms:7.1f} ms   x{ms / ref:.2f}")


if __name__ == "__main__":
    main()
