"""The tables: the median of each figure over rounds (counts: the total).

``table`` has one row per figure, geventfork beside Node and the floor (the
hand-off and cost sections); ``ipc_table`` one row per IPC program and
figure, with ratios to Node, ``multiprocessing.Pipe`` and gipc.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional

__all__ = ["Row", "ROWS", "table", "IpcTarget", "IPC_TARGETS", "ipc_table"]

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
        Row(section, "conn/s, vs the floor", "conn_per_s", against="floor", at_least=0.85),
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
    if len(lines) == 1:
        return ""
    return _markdown(lines)


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


#: The IPC figures, by section: (figure, key).
IPC_FIGURES = {
    "IPC stream": ("msgs/s", "msgs_per_s"),
    "IPC ping-pong": ("round trips/s", "round_trips_per_s"),
    "IPC large 1 MiB": ("MB/s", "mb_per_s"),
    "IPC large 16 MiB": ("MB/s", "mb_per_s"),
}
#: The IPC programs (``_systems.IPC``), in table order, and their labels.
IPC_LABELS = {
    "geventfork-recv": "geventfork recv(), JSON",
    "geventfork": "geventfork 'message', JSON",
    "geventfork-recv-pickle": "geventfork recv(), pickle",
    "geventfork-pickle": "geventfork 'message', pickle",
    "node": "Node, JSON",
    "pipe": "multiprocessing.Pipe, blocking",
    "pipe-gevent": "multiprocessing.Pipe, gevent waits",
    "gipc": "gipc",
}
#: The ratio columns: (header, program).
_IPC_REFERENCES = (("vs Node", "node"), ("vs Pipe", "pipe"), ("vs gipc", "gipc"))


@dataclass(frozen=True)
class IpcTarget:
    """``program``'s figure in ``section`` must be at least ``at_least`` times ``against``'s."""

    section: str
    program: str
    against: str
    at_least: float


IPC_TARGETS = [
    IpcTarget("IPC stream", "geventfork-recv", "node", 1.5),
    IpcTarget("IPC stream", "geventfork", "node", 1.0),
    IpcTarget("IPC stream", "geventfork-recv-pickle", "pipe", 1.0),
    IpcTarget("IPC stream", "geventfork-recv-pickle", "gipc", 0.8),
    IpcTarget("IPC ping-pong", "geventfork-recv", "node", 0.9),
]
_IPC_HEADER = ("section", "program", "figure", "median", "vs Node", "vs Pipe", "vs gipc")


def ipc_table(results: dict) -> str:
    """Format the IPC sections of ``results[(section, program)]`` as Markdown.

    Each row is one program's figure; the ratio columns divide it by Node's,
    blocking ``multiprocessing.Pipe``'s and gipc's, and the last two columns
    give the targets of the row's program and whether they are met.
    """
    lines = [(*_IPC_HEADER, "target", "met")]
    for section, (figure, key) in IPC_FIGURES.items():
        medians = {
            program: _aggregate(Row(section, figure, key), results.get((section, program), []))
            for program in IPC_LABELS
        }
        for program, label in IPC_LABELS.items():
            if medians[program] is None:
                continue
            ratios = [
                "" if ref == program else _ratio_cell(medians[program], medians[ref])
                for _header, ref in _IPC_REFERENCES
            ]
            target, met = _ipc_targets(section, program, medians)
            lines.append((section, label, figure, f"{medians[program]:.0f}", *ratios, target, met))
    if len(lines) == 1:
        return ""
    return _markdown(lines)


def _ratio_cell(mine: Optional[float], theirs: Optional[float]) -> str:
    if mine is None or not theirs:
        return ""
    return f"{mine / theirs:.2f}x"


def _ipc_targets(section: str, program: str, medians: dict) -> tuple:
    """The ``(target, met)`` cells of one row: every target of ``program`` in ``section``."""
    targets, verdicts = [], []
    for t in IPC_TARGETS:
        if (t.section, t.program) != (section, program):
            continue
        mine, theirs = medians.get(program), medians.get(t.against)
        targets.append(f">= {t.at_least}x {_IPC_NAMES[t.against]}")
        if mine is None or not theirs:
            verdicts.append("n/a")
        else:
            verdicts.append("met" if mine / theirs >= t.at_least else "NOT met")
    return "; ".join(targets), "; ".join(verdicts)


_IPC_NAMES = {"node": "Node", "pipe": "Pipe", "gipc": "gipc"}


def _markdown(lines: list) -> str:
    """Rows of cells (the first the header) as a Markdown table, columns padded."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rule = tuple("-" * w for w in widths)
    return "\n".join(
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |"
        for line in [lines[0], rule, *lines[1:]]
    )
