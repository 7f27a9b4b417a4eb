"""The IPC benchmark programs run to completion and the IPC table judges targets right.

Each program is run on a few messages (no figure is checked, only that it
ran, counted every message and printed its JSON line); the table is fed
made-up medians.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from helpers import python_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
PEERS = os.path.join(BENCHMARKS, "peers_ipc")
GEVENTFORK = [
    sys.executable,
    "-m",
    "geventfork",
    os.path.join(BENCHMARKS, "geventfork_ipc", "parent.py"),
]
#: Seconds a program may take on a few messages (start-up included).
DEADLINE = 60
#: The benchmarks, small: (arguments, the key of the figure it prints).
BENCHES = [
    (["stream", "300"], "msgs_per_s"),
    (["pingpong", "50"], "round_trips_per_s"),
    (["large", "100000", "3"], "mb_per_s"),
]


def has_gipc() -> bool:
    return importlib.util.find_spec("gipc") is not None


PROGRAMS = {
    "geventfork recv()": [*GEVENTFORK, "--receive", "recv"],
    "geventfork pickle": [*GEVENTFORK, "--serialization", "pickle"],
    "geventfork recv() pickle": [*GEVENTFORK, "--serialization", "pickle", "--receive", "recv"],
    "Pipe blocking": [sys.executable, os.path.join(PEERS, "pipe_parent.py")],
    "Pipe gevent": [sys.executable, os.path.join(PEERS, "pipe_parent.py"), "--gevent"],
    "gipc": pytest.param(
        [sys.executable, os.path.join(PEERS, "gipc_parent.py")],
        marks=pytest.mark.skipif(not has_gipc(), reason="gipc is not installed"),
    ),
}


@pytest.mark.timeout(DEADLINE * len(BENCHES) + 30)
@pytest.mark.parametrize("argv", PROGRAMS.values(), ids=PROGRAMS.keys())
def test_program_runs_each_bench(argv):
    for args, key in BENCHES:
        done = subprocess.run(
            [*argv, *args], env=python_env(), capture_output=True, text=True, timeout=DEADLINE
        )
        assert done.returncode == 0, f"{args}: exited with {done.returncode}\n{done.stderr}"
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        assert figures["bench"] == args[0]
        assert figures[key] > 0
        if args[0] == "stream":
            assert figures["n"] == int(args[1])  # the child counted every message
        if args[0] == "large":
            assert figures["ok"] is True, figures


def load_report():
    """benchmarks/_report.py, as a module (its dataclasses need it in sys.modules)."""
    name = "_bench_report"
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, "_report.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def results_of(medians: dict) -> dict:
    """``run_rounds``' results for one median per (section, program), three equal rounds."""
    keys = {"IPC stream": "msgs_per_s", "IPC ping-pong": "round_trips_per_s"}
    return {
        (section, program): [{keys[section]: value}] * 3
        for (section, program), value in medians.items()
    }


def row(text: str, section: str, label: str) -> list:
    """The cells of the table's row for ``label`` in ``section``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:2] == [section, label]:
            return cells
    raise AssertionError(f"no row {section} / {label} in\n{text}")


def test_ipc_table_ratios_and_targets():
    report = load_report()
    text = report.ipc_table(
        results_of(
            {
                ("IPC stream", "node"): 100,
                ("IPC stream", "geventfork-recv"): 150,  # 1.5x Node: met, exactly
                ("IPC stream", "geventfork"): 99,  # 0.99x Node: missed
                ("IPC stream", "pipe"): 200,
                ("IPC stream", "gipc"): 250,
                ("IPC stream", "geventfork-recv-pickle"): 210,  # 1.05x Pipe, 0.84x gipc
                ("IPC ping-pong", "node"): 40,
                ("IPC ping-pong", "geventfork-recv"): 30,  # 0.75x Node: missed
            }
        )
    )
    stream_recv = row(text, "IPC stream", "geventfork recv(), JSON")
    assert stream_recv[3:7] == ["150", "1.50x", "0.75x", "0.60x"]
    assert stream_recv[7:] == [">= 1.5x Node", "met"]
    assert row(text, "IPC stream", "geventfork 'message', JSON")[7:] == [">= 1.0x Node", "NOT met"]
    assert row(text, "IPC stream", "geventfork recv(), pickle")[7:] == [
        ">= 1.0x Pipe; >= 0.8x gipc",
        "met; met",
    ]
    assert row(text, "IPC ping-pong", "geventfork recv(), JSON")[7:] == [">= 0.9x Node", "NOT met"]
    assert row(text, "IPC stream", "Node, JSON")[4] == ""  # no ratio to itself


def test_ipc_table_without_the_reference_says_na():
    report = load_report()
    text = report.ipc_table(results_of({("IPC stream", "geventfork-recv-pickle"): 210}))
    assert row(text, "IPC stream", "geventfork recv(), pickle")[7:] == [
        ">= 1.0x Pipe; >= 0.8x gipc",
        "n/a; n/a",
    ]
    assert report.ipc_table({}) == ""
