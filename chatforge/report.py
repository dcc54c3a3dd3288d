"""The report card: ``runs/<name>/report.md`` and its numbers, ``runs/<name>/results.json``.

Each stage returns a markdown section; the report is rewritten (atomically) after every stage, so a
run that stops half-way still leaves a readable report of what it did.

``results.json`` holds every measured claim, one object per experiment id (schema in the README):

    {"<id>": {"conditions": {"<name>": {"k": int, "n": int, "rate": float, "ci": [lo, hi]}, ...},
              "diffs": {"<A> - <B>": {"delta": float, "ci": [lo, hi], "method": "paired bootstrap"}},
              ...extra fields of the experiment...}}

Conditions carry Wilson 95% intervals; differences between two conditions on the same items carry a
paired bootstrap interval (resampling items, or clusters of items such as one person's questions).
The report's tables are rendered from this file (``results_table``), so the two never disagree.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from chatforge.common import atomic_write_json, atomic_write_text, git_sha, paired_bootstrap, provenance, read_json, wilson

RESULTS_JSON = "results.json"


@dataclass
class Report:
    run_dir: Path
    title: str = "chatforge report card"
    header: list[str] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)  # (stage, markdown)
    timings: list[tuple[str, float, str]] = field(default_factory=list)  # (stage, seconds, status)

    def add(self, stage: str, markdown: str) -> None:
        self.sections.append((stage, markdown.strip()))
        self.write()

    def time(self, stage: str, seconds: float, status: str = "ok") -> None:
        self.timings.append((stage, seconds, status))
        self.write()

    def render(self) -> str:
        prov = provenance()
        lines = [f"# {self.title}", ""]
        lines += [f"- run directory: `{self.run_dir}`",
                  f"- chatforge {prov['chatforge_version']} (git {git_sha() or 'unknown'}), "
                  f"python {prov['python']}, {platform.machine()} {platform.system()}",
                  f"- written {prov['created']}"]
        lines += [f"- {h}" for h in self.header]
        if self.timings:
            total = sum(s for _, s, _ in self.timings)
            lines += ["", "## Stage times", "", "| stage | seconds | status |", "|---|---:|---|"]
            lines += [f"| {name} | {sec:.1f} | {status} |" for name, sec, status in self.timings]
            lines += [f"| **total** | **{total:.1f}** | |"]
        for stage, md in self.sections:
            lines += ["", md]
        return "\n".join(lines) + "\n"

    def write(self) -> Path:
        path = Path(self.run_dir) / "report.md"
        atomic_write_text(path, self.render())
        return path


def md_table(headers: list[str], rows: list[list[object]]) -> str:
    """A small markdown table; floats get 4 significant digits."""
    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


# ----------------------------------------------------------------------------- results.json

def condition(outcomes: Sequence[bool | int]) -> dict[str, Any]:
    """A condition's entry from per-item 0/1 outcomes: k, n, rate and the Wilson 95% interval."""
    k, n = int(sum(bool(o) for o in outcomes)), len(outcomes)
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else float("nan"), "ci": [lo, hi]}


def paired_diff(a: Sequence[float], b: Sequence[float], clusters: Sequence[Any] | None = None,
                seed: int = 0) -> dict[str, Any]:
    """A difference entry: mean of a - b on paired items with its bootstrap 95% interval."""
    delta, lo, hi = paired_bootstrap(a, b, clusters, seed=seed)
    return {"delta": delta, "ci": [lo, hi], "method": "paired bootstrap" + (" (clusters)" if clusters else "")}


def experiment(outcomes: dict[str, Sequence[bool | int]], diffs: Sequence[tuple[str, str]] = (),
               clusters: Sequence[Any] | None = None, **extra: Any) -> dict[str, Any]:
    """One experiment's results.json object from per-item outcomes of each condition (same item order
    across conditions that are compared) and the (A, B) pairs whose difference A - B is reported."""
    out: dict[str, Any] = {"conditions": {name: condition(o) for name, o in outcomes.items()}, "diffs": {}}
    for i, (a, b) in enumerate(diffs):
        out["diffs"][f"{a} - {b}"] = paired_diff([float(x) for x in outcomes[a]], [float(x) for x in outcomes[b]],
                                                 clusters, seed=i)
    out.update(extra)
    return out


def update_results(run_dir: str | Path, exp_id: str, obj: dict[str, Any]) -> Path:
    """Set ``results.json[exp_id] = obj`` (read, replace that key, atomic write); returns the path."""
    path = Path(run_dir) / RESULTS_JSON
    results = read_json(path, "results") if path.exists() else {}
    results[exp_id] = obj
    atomic_write_json(path, results)
    return path


def load_results(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULTS_JSON
    return read_json(path, "results") if path.exists() else {}


def fmt_rate(c: dict[str, Any]) -> str:
    """'65.0% [55.2, 73.7] (65/100)'."""
    if not c.get("n"):
        return "n/a (n=0)"
    lo, hi = c["ci"]
    return f"{100 * c['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({c['k']}/{c['n']})"


def fmt_diff(d: dict[str, Any]) -> str:
    """'+52.0 points [41.0, 62.0]' and, when the interval contains 0, says so."""
    lo, hi = d["ci"]
    s = f"{100 * d['delta']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return s + ("" if lo > 0 or hi < 0 else " (interval contains 0: no effect shown)")


def results_table(exp: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    """Markdown tables of one experiment: its conditions, then its differences."""
    labels = labels or {}
    rows = [[labels.get(name, name), fmt_rate(c)] for name, c in exp["conditions"].items()]
    md = md_table(["condition", "rate [95% CI] (k/n)"], rows)
    if exp.get("diffs"):
        md += "\n\n" + md_table(["difference", "paired bootstrap 95% CI"],
                                 [[name, fmt_diff(d)] for name, d in exp["diffs"].items()])
    return md


# ----------------------------------------------------------------------------- sections written after the run

def marked_section(key: str, markdown: str) -> str:
    """A report section between ``<!-- key -->`` markers, so a later command can replace it in place."""
    return f"<!-- {key} -->\n{markdown.strip()}\n<!-- /{key} -->"


def upsert_report_section(run_dir: str | Path, key: str, markdown: str) -> Path:
    """Put ``markdown`` into ``<run>/report.md`` between ``<!-- key -->`` markers: replaced in place
    when a section with that key is there, appended otherwise (a command run after the speedrun)."""
    path = Path(run_dir) / "report.md"
    text = path.read_text(encoding="utf-8") if path.exists() else "# chatforge report card\n"
    start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    block = marked_section(key, markdown)
    if start in text and end in text[text.index(start):]:
        i = text.index(start)
        j = text.index(end, i) + len(end)
        text = text[:i] + block + text[j:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(path, text)
    return path
