"""The report card: ``runs/<name>/report.md``, assembled from sections that stages hand in.

Each stage returns a markdown section; the report is rewritten (atomically) after every stage, so a
run that stops half-way still leaves a readable report of what it did.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

from chatforge.common import atomic_write_text, git_sha, provenance


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
