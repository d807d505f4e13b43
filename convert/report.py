"""Results of `facemtl convert` and `facemtl bench`: one row per (format, head), JSON and Markdown."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from facemtl.convert.check import PASSED, HeadCheck
from facemtl.runtime.io import atomic_write_text


@dataclass
class FormatResult:
    format: str
    status: str                       # passed | check failed | export failed
    file: str | None = None           # where the file is (accepted, or under rejected/)
    size_bytes: int | None = None
    export_seconds: float | None = None
    check_seconds: float | None = None
    latency_ms: dict[str, float] | None = None  # median, p95 at batch 1, one thread (the first interpreter)
    error: str | None = None
    heads: list[HeadCheck] = field(default_factory=list)  # one per (interpreter, head)
    # what checked the file, in order: interpreter, version, machine, python, latency_ms
    interpreters: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def to_dict(self) -> dict:
        d = asdict(self)
        d["heads"] = [h.to_dict() for h in self.heads]
        return d


def mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def _num(v, fmt: str = "{:.3f}", signed: bool = False) -> str:
    if v is None:
        return "-"
    return (("{:+" + fmt[2:]) if signed else fmt).format(v)


def _latency(r: FormatResult, interpreter: str = "") -> str:
    lat = next((i.get("latency_ms") for i in r.interpreters if i.get("interpreter") == interpreter), r.latency_ms)
    if not lat:
        return "-"
    return f"{lat['median']:.3f} / {lat['p95']:.3f}"


def _interpreter(r: FormatResult, name: str) -> str:
    version = next((i.get("version") for i in r.interpreters if i.get("interpreter") == name), None)
    return "-" if not name else name if not version or version == "?" else f"{name} {version}"


def convert_markdown(results: list[FormatResult], header: str = "") -> str:
    """One row per format, interpreter and head: status, size, metric for Keras and the file, delta,
    agreement, latency."""
    lines = [header] if header else []
    lines += [
        "| format | status | head | head check | interpreter | size | metric | keras | file | delta (tolerance) "
        "| agreement | max abs diff | ms median / p95 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if not r.heads:
            lines.append(f"| {r.format} | {r.status} | - | - | - | {mb(r.size_bytes)} | - | - | - | - | - | - | "
                         f"{_latency(r)} |")
            continue
        for h in r.heads:
            verdict = "passed" if h.passed else "FAILED: " + "; ".join(h.reasons)
            lines.append(
                f"| {r.format} | {r.status} | {h.head} | {verdict} | {_interpreter(r, h.interpreter)} | "
                f"{mb(r.size_bytes)} | {h.metric} | {_num(h.keras)} | "
                f"{_num(h.converted)} | {_num(h.delta, signed=True)} ({h.tolerance:g}) | "
                f"{'-' if h.agreement is None else f'{h.agreement:.2%}'} | {h.max_abs_diff:.2g} | "
                f"{_latency(r, h.interpreter)} |"
            )
    errors = [r for r in results if r.error]
    if errors:
        lines.append("")
        for r in errors:
            lines.append(f"- **{r.format}** ({r.status}): {r.error}")
    return "\n".join(lines) + "\n"


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def bench_table(rows: list[dict], head_metrics: list[str]) -> str:
    """`yolo benchmark`-style table: format, status, size, latency, FPS, one column per head metric."""
    cols = ["format", "status", "size MB", "ms median", "ms p95", "FPS"] + head_metrics
    table = [cols]
    for r in rows:
        lat = r.get("latency_ms") or {}
        med = lat.get("median")
        line = [r["format"], r["status"], "-" if r.get("size_bytes") is None else f"{r['size_bytes'] / 1e6:.2f}",
                _num(med), _num(lat.get("p95")), "-" if not med else f"{1000.0 / med:.0f}"]
        metrics = r.get("metrics") or {}
        line += [_num(metrics.get(k), "{:.2f}") for k in head_metrics]
        table.append(line)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(cols))]
    out = []
    for j, row in enumerate(table):
        out.append("  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out) + "\n"
