"""What a section of the suite measured (figures) and what must hold (checks), printed and saved as JSON."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class Section:
    name: str
    command: str
    figures: dict = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(passed), detail))
        return bool(passed)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def crashed(self, error: BaseException) -> None:
        """A section that could not finish reports why instead of losing the other sections' figures."""
        self.check("section ran to the end", False, f"{type(error).__name__}: {error}")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


def render(sections: list[Section]) -> str:
    lines = []
    for section in sections:
        verdict = "ok" if not section.failures else f"{len(section.failures)} FAILED"
        lines += [f"== {section.name} ({verdict})", f"   command: {section.command}"]
        lines += [f"   {key}: {_short(value)}" for key, value in section.figures.items()]
        for check in section.checks:
            mark = "pass" if check.passed else "FAIL"
            lines.append(f"   [{mark}] {check.name}" + (f": {check.detail}" if check.detail else ""))
    failed = sum(len(s.failures) for s in sections)
    lines.append(f"== {sum(len(s.checks) for s in sections)} checks, {failed} failed")
    return "\n".join(lines)


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 300 else text[:297] + "..."


def to_json(sections: list[Section]) -> dict:
    return {"sections": [asdict(s) for s in sections],
            "failed": [f"{s.name}: {c.name}" for s in sections for c in s.failures]}
