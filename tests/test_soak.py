"""A short soak: ``benchmarks/soak.py`` with 3,000 hand-offs instead of 100,000.

The priority example (a parent and two forked workers) serves every
connection in full, and afterwards each of its processes holds exactly as
many fds as after the warm-up, with RSS grown by less than a generous bound.
"""

import importlib.util
import io
import os

import gevent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Hand-offs measured, after the warm-up ones.
CONNECTIONS = 3000
WARMUP = 500
CONCURRENCY = 20
#: RSS growth allowed per process over the measured hand-offs. A leak of an
#: object per connection shows in the fds long before it shows here.
RSS_BOUND_KIB = 16 * 1024
#: Seconds the whole run may take (it takes a few).
DEADLINE = 60


def load_soak():
    spec = importlib.util.spec_from_file_location(
        "soak", os.path.join(ROOT, "benchmarks", "soak.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_soak_leaks_nothing():
    soak = load_soak()
    with gevent.Timeout(DEADLINE, AssertionError(f"the soak took over {DEADLINE} s")):
        result = soak.soak(CONNECTIONS, CONCURRENCY, WARMUP)
    figures = io.StringIO()
    soak.report(result, figures)
    assert not result.failures, f"connections not answered in full:\n{figures.getvalue()}"
    assert result.settled, f"client sockets still open after the load:\n{figures.getvalue()}"
    for name, before in result.start.items():
        after = result.end[name]
        assert after.fds == before.fds, (
            f"{name} holds {after.fds} fds after {CONNECTIONS} hand-offs, "
            f"{before.fds} before:\n{figures.getvalue()}"
        )
        assert after.rss_kib - before.rss_kib < RSS_BOUND_KIB, (
            f"{name}'s RSS grew by over {RSS_BOUND_KIB // 1024} MiB in "
            f"{CONNECTIONS} hand-offs:\n{figures.getvalue()}"
        )
