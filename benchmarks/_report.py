"""The table: one row per figure, the median over rounds (counts: the total)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional

__all__ = ["Row", "ROWS", "table"]

SYSTEMS = ("geventfork", "node", "floor")


@dataclass(frozen=True)
class Row:
    """One figure of one section, and the target geventfork must meet, if any.

    ``against`` is the system the ratio compares geventfork with; a target is
    met when the ratio is at least ``at_least``, or, with ``zero``, when
    geventfork's total is 0.
    """

    section: str
    figure: str
    key: str
    fmt: str = ".0f"
    total: bool = False  #: a count: summed over rounds instead of the median
    ratio: bool = True  #: whether a ratio means anything for this figure
    against: str = "node"
    at_least: Optional[float] = None
    zero: bool = False


def _handoff_rows(section: str, vs_node: float, zero: bool) -> list:
    return [
        Row(section, "conn/s", "conn_per_s", at_least=vs_node),
        Row(section, "conn/s, vs the floor", "conn_per_s", against="floor", at_least=0.8),
        Row(section, "latency p50 (ms)", "p50_ms", ".2f"),
        Row(section, "latency p99 (ms)", "p99_ms", ".2f"),
        Row(section, "reset (total)", "reset", "d", total=True, zero=zero),
        Row(section, "empty (total)", "empty", "d", total=True, zero=zero),
        Row(section, "hung (total)", "hung", "d", total=True, zero=zero),
        Row(section, "connect errors (total)", "connect_error", "d", total=True),
        Row(section, "server died (rounds)", "server_died", "d", total=True),
        Row(section, "fds open after the load", "open_fds", "d", ratio=False),
        Row(section, "server CPU (% of a core)", "server_cpu_pct"),
        Row(section, "parent CPU µs/served conn", "parent_cpu_us"),
        Row(section, "children CPU µs/served conn", "children_cpu_us"),
        Row(section, "loadgen CPU user (%)", "loadgen_user_pct", ".1f", ratio=False),
        Row(section, "loadgen CPU system (%)", "loadgen_sys_pct", ratio=False),
    ]


ROWS = [
    *_handoff_rows("hand-off silent", 1.2, zero=False),
    *_handoff_rows("hand-off request", 5.0, zero=True),
    Row("IPC stream", "msgs/s", "msgs_per_s", at_least=1.5),
    Row("IPC ping-pong", "round trips/s", "round_trips_per_s", at_least=0.9),
    Row("IPC large 1 MiB", "MB/s", "mb_per_s"),
    Row("IPC large 16 MiB", "MB/s", "mb_per_s"),
    Row("cost", "idle child RSS (MiB)", "rss_mib", ".1f"),
    Row("cost", "fork() -> 'spawn' (ms)", "spawn_ms", ".1f"),
    Row("cost", "fork() -> first message (ms)", "ready_ms", ".1f"),
]

_HEADER = ("section", "figure", "geventfork", "Node", "floor", "ratio", "target", "met")


def table(results: dict) -> str:
    """Format ``results[(section, system)]`` (a list of per-round dicts) as Markdown."""
    lines = [_HEADER]
    for row in ROWS:
        values = {s: _aggregate(row, results.get((row.section, s), [])) for s in SYSTEMS}
        if all(v is None for v in values.values()):
            continue  # a section that was not run
        lines.append(_format(row, values))
    widths = [max(len(line[i]) for line in lines) for i in range(len(_HEADER))]
    rule = tuple("-" * w for w in widths)
    return "\n".join(
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |"
        for line in [lines[0], rule, *lines[1:]]
    )


def _aggregate(row: Row, rounds: list) -> Optional[float]:
    """The median over rounds (or the total, for counts); None without data."""
    values = [r[row.key] for r in rounds if row.key in r]
    if not values:
        return None
    return sum(values) if row.total else statistics.median(values)


def _format(row: Row, values: dict) -> tuple:
    mine = values["geventfork"]
    ratio = _ratio(row, mine, values[row.against])
    cells = [_number(values[s], row.fmt) for s in SYSTEMS]
    ratio_cell = "" if ratio is None else f"{ratio:.2f}x {_NAMES[row.against]}"
    return (row.section, row.figure, *cells, ratio_cell, _target(row), _met(row, mine, ratio))


def _ratio(row: Row, mine: Optional[float], theirs: Optional[float]) -> Optional[float]:
    """geventfork / ``row.against``, or None where it means nothing."""
    if not row.ratio or row.total or mine is None or theirs is None:
        return None
    if theirs == 0:
        return float("inf") if mine else None
    return mine / theirs


_NAMES = {"node": "Node", "floor": "floor"}


def _number(value: Optional[float], fmt: str) -> str:
    if value is None:
        return "-"
    return format(round(value) if fmt == "d" else value, fmt)


def _target(row: Row) -> str:
    if row.zero:
        return "0 for geventfork"
    if row.at_least is not None:
        return f">= {row.at_least}x {_NAMES[row.against]}"
    return ""


def _met(row: Row, mine: Optional[float], ratio: Optional[float]) -> str:
    if row.zero:
        return "n/a" if mine is None else ("met" if mine == 0 else "NOT met")
    if row.at_least is None:
        return ""
    if ratio is None:
        return "n/a"
    return "met" if ratio >= row.at_least else "NOT met"
