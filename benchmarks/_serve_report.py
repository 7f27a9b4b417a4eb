"""``serve.py``'s table: one row per figure, the median over the runs (counts: the total)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional

from _serve_setup import ERROR_KINDS, ERROR_LABELS, LOADS, SERVERS, SLOW

# The report -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One figure of a section; ``target`` is how geventfork's is judged against gunicorn's.

    ``target``: ``("ratio>=", x)``: median ratio at least x; ``("ratio<=", x)``:
    at most x (latency); ``("zero",)``: geventfork's total is 0;
    ``("zero-or-fewer",)``: 0, or fewer than gunicorn's; ``()``: no target.
    """

    section: str
    figure: str
    key: str
    fmt: str = ".0f"
    total: bool = False
    target: tuple = ()
    parts: tuple = ()  #: keys of counts shown as totals ``a/b/c`` in one cell


def rows() -> list:
    """Every row of the table, in order."""
    out = []
    targets = {"keepalive": 1.2, "close": 1.0, "slow": 1.1}
    for name, load in LOADS.items():
        title = f"{load.title}, {load.connections} conns"
        out += [
            Row(name, f"{title}: req/s", "req_per_s", target=("ratio>=", targets[name])),
            Row(name, f"{title}: latency p50 (ms)", "p50_ms", ".2f"),
            Row(name, f"{title}: latency p99 (ms)", "p99_ms", ".2f", target=("ratio<=", 1.0)),
            Row(name, f"{title}: server CPU µs/request", "cpu_us_per_request"),
            Row(name, f"{title}: errors (total)", "errors", "d", True, ("zero",)),
            Row(name, f"{title}: errors {ERROR_LABELS}", "", parts=ERROR_KINDS),
            Row(name, f"{title}: server died (runs)", "server_died", "d", True),
        ]
    reloaded = ("wrk_keepalive", "wrk_close", "python_keepalive")
    out += [
        Row("reload", "reload: requests answered (total)", "ok", "d", True),
        Row("reload", "reload: requests failed (total)", "failed", "d", True, ("zero-or-fewer",)),
        Row(
            "reload",
            "reload: failed, wrk keep-alive/wrk new conn./Python keep-alive",
            "",
            parts=tuple(f"{k}_failed" for k in reloaded),
        ),
        Row(
            "reload",
            "reload: Python keep-alive connections reopened",
            "python_keepalive_reopened",
            "d",
            True,
            ("zero",),
        ),
        Row("reload", "reload: clients idle 2.5-3.5 s: answered", "python_idle_ok", "d", True),
        Row(
            "reload",
            "reload: clients idle 2.5-3.5 s: failed",
            "python_idle_failed",
            "d",
            True,
            ("zero",),
        ),
        Row("reload", "reload: all workers replaced (runs)", "workers_replaced", "d", True),
        Row("reload", "reload: server died (runs)", "server_died", "d", True),
    ]
    return out


def table(results: dict, available: dict) -> str:
    """``results[(section, server)]`` (a list of per-run dicts) as a Markdown table."""
    header = ("figure", "geventfork", "gunicorn", "ratio", "target", "met")
    lines = [header]
    for row in rows():
        runs = {s: results.get((row.section, s), []) for s in SERVERS}
        if not any(runs.values()):
            continue  # a section not run
        if row.parts:
            cells = [_parts(row, runs[s]) if available[s] else "not available" for s in SERVERS]
            lines.append((row.figure, *cells, "", "", ""))
            continue
        values = {s: _aggregate(row, runs[s]) for s in SERVERS}
        cells = [_number(values[s], row.fmt) if available[s] else "not available" for s in SERVERS]
        ratio = _ratio(values["geventfork"], values["gunicorn"]) if not row.total else None
        lines.append(
            (
                row.figure,
                *cells,
                "" if ratio is None else f"{ratio:.2f}x",
                _target(row),
                _met(row, values, ratio),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rule = tuple("-" * w for w in widths)
    return "\n".join(
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |"
        for line in [lines[0], rule, *lines[1:]]
    )


def _parts(row: Row, runs: list) -> str:
    """The totals of ``row.parts`` over the runs, as ``a/b/c``; ``-`` without runs."""
    if not runs:
        return "-"
    return "/".join(str(sum(r.get(key, 0) for r in runs)) for key in row.parts)


def _aggregate(row: Row, runs: list) -> Optional[float]:
    """The median over the runs (counts: the total); None without data."""
    values = [r[row.key] for r in runs if row.key in r]
    if not values:
        return None
    return sum(values) if row.total else statistics.median(values)


def _ratio(mine: Optional[float], theirs: Optional[float]) -> Optional[float]:
    """geventfork / gunicorn, or None where it means nothing."""
    if mine is None or theirs is None or theirs == 0:
        return None
    return mine / theirs


def _number(value: Optional[float], fmt: str) -> str:
    """A table cell for a figure; ``-`` without data."""
    if value is None:
        return "-"
    return format(round(value) if fmt == "d" else value, fmt)


def _target(row: Row) -> str:
    """The target column: what geventfork's figure must be."""
    if not row.target:
        return ""
    kind = row.target[0]
    if kind == "ratio>=":
        return f">= {row.target[1]}x gunicorn"
    if kind == "ratio<=":
        return "no worse than gunicorn"
    if kind == "zero":
        return "0"
    return "0, or fewer than gunicorn"


def _met(row: Row, values: dict, ratio: Optional[float]) -> str:
    """The met column: ``met``, ``NOT met``, ``n/a`` (no data) or empty (no target)."""
    if not row.target:
        return ""
    mine, theirs = values["geventfork"], values["gunicorn"]
    kind = row.target[0]
    if kind in ("zero", "zero-or-fewer"):
        if mine is None:
            return "n/a"
        met = mine == 0 or (kind == "zero-or-fewer" and theirs is not None and mine < theirs)
    elif ratio is None:
        return "n/a"
    elif kind == "ratio>=":
        met = ratio >= row.target[1]
    else:
        met = ratio <= row.target[1]
    return "met" if met else "NOT met"


def slow_ceiling(results: dict) -> str:
    """A note on the slow route's ceiling, ``connections / SLOW`` req/s, and each server's share.

    No server answers more than one request per connection per 50 ms: near
    the ceiling, a ratio of rates says nothing of the servers.
    """
    load = LOADS["slow"]
    ceiling = load.connections / SLOW
    shares = []
    for name in SERVERS:
        rates = [r["req_per_s"] for r in results.get(("slow", name), [])]
        if rates:
            shares.append(f"{name} {statistics.median(rates) / ceiling:.0%}")
    if not shares:
        return ""
    return (
        f"slow route ceiling: {load.connections} connections / {SLOW} s = {ceiling:.0f} req/s "
        f"whatever the server; reached: {', '.join(shares)}"
    )
