"""The README's quick start, saved exactly as written and run from its own folder.

The snippets are read from README.md here, so the test follows the README.
The child is named ``subprocess.py`` (Node's example names it
``subprocess.js``) and sits in the current directory, which ``python -m``
puts on ``sys.path``: the runner must patch with gevent first.

The parent listens on 0.0.0.0:1337 and sends clients from 74.125.127.100
to the 'special' child. To run it unchanged, the test runs it in a network
namespace of its own (``unshare -rn``, no root needed where user
namespaces are allowed): port 1337 is free there, and 74.125.127.100 is
put on its loopback interface, so a client can connect from it. Without
user namespaces that test is skipped; the same snippets still run in this
namespace with the normal client only (skipped if 1337 is taken), and
``examples/priority`` (the same code, the special address as an argument)
runs from its own folder with both kinds of client.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import gevent
import pytest

from helpers import TIMEOUT, ask, python_env, read_to_eof

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NORMAL = b"Request handled with normal priority"
SPECIAL = b"Request handled with special priority"
#: Seconds the whole namespace run may take.
DEADLINE = 30


def quick_start_snippets():
    """``{file name: source}`` of the README's code blocks that start with ``# NAME.py``."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    blocks = re.findall(r"```python\n(# ([\w.]+\.py)\n.*?)```", readme, re.S)
    snippets = {name: source for source, name in blocks}
    assert set(snippets) == {"parent.py", "subprocess.py"}, (
        f"README code blocks: {sorted(snippets)}"
    )
    return snippets


@pytest.fixture
def quick_start(tmp_path):
    """An otherwise empty folder holding the README's parent.py and subprocess.py."""
    folder = tmp_path / "quick-start"
    folder.mkdir()
    for name, source in quick_start_snippets().items():
        (folder / name).write_text(source, encoding="utf-8")
    return folder


# -- in a network namespace of its own: the exact snippets, both clients ----

DRIVER = textwrap.dedent("""\
    # Runs inside `unshare -rn`: loopback up, the special address on it, the
    # parent started from the snippets' folder, one client of each kind.
    import json, os, signal, socket, subprocess, sys, time

    folder, ip = sys.argv[1], sys.argv[2]
    subprocess.run([ip, "link", "set", "lo", "up"], check=True)
    subprocess.run([ip, "addr", "add", "74.125.127.100/32", "dev", "lo"], check=True)
    parent = subprocess.Popen([sys.executable, "-m", "geventfork", "parent.py"], cwd=folder,
                              stderr=subprocess.PIPE)

    def ask(source):
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as sock:
                sock.settimeout(5)
                sock.bind((source, 0))
                try:
                    sock.connect(("127.0.0.1", 1337))
                except ConnectionRefusedError:  # not listening yet
                    if time.monotonic() > deadline or parent.poll() is not None:
                        raise
                    time.sleep(0.05)
                    continue
                reply = b""
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return reply.decode()
                    reply += chunk

    try:
        replies = {source: ask(source) for source in ("127.0.0.1", "74.125.127.100")}
    finally:
        parent.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = parent.communicate(timeout=10)
    print(json.dumps({"replies": replies, "status": parent.returncode, "stderr": err.decode()}))
""")


def user_namespaces():
    """Why ``unshare -rn`` cannot be used here, or None if it can."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return "unshare or ip is not installed"
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"unshare -rn: {probe.stderr.decode().strip()}"
    return None


def test_quick_start_as_written_serves_both_kinds_of_client(popen, quick_start, tmp_path):
    missing = user_namespaces()
    if missing:
        pytest.skip(f"no network namespace for 74.125.127.100: {missing}")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.Popen(
        ["unshare", "-rn", sys.executable, str(driver), str(quick_start), shutil.which("ip")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=python_env(),
        start_new_session=True,
    )
    popen.append(proc)
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left in the namespace
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["replies"] == {
        "127.0.0.1": NORMAL.decode(),
        "74.125.127.100": SPECIAL.decode(),
    }
    # Ctrl-C ended it as it ends node: by SIGINT, no traceback from anyone.
    assert (result["status"], result["stderr"]) == (-signal.SIGINT, "")


# -- here: the exact snippets, the normal client ---------------------------


def port_1337_taken():
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", 1337))
        except OSError as exc:
            return str(exc)
    return None


def test_quick_start_as_written_serves_a_normal_client(popen, quick_start):
    taken = port_1337_taken()
    if taken:
        pytest.skip(f"port 1337 is taken on this machine: {taken}")
    parent = gevent.subprocess.Popen(
        [sys.executable, "-m", "geventfork", "parent.py"],
        cwd=str(quick_start),
        stderr=subprocess.PIPE,
        env=python_env(),
        start_new_session=True,
    )
    popen.append(parent)
    with gevent.Timeout(2 * TIMEOUT, AssertionError("parent.py never listened on 1337")):
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", 1337), timeout=TIMEOUT)
                break
            except ConnectionRefusedError:
                if parent.poll() is not None:
                    err = parent.stderr.read().decode()
                    if "Address already in use" in err:
                        pytest.skip("port 1337 was taken meanwhile")
                    pytest.fail(f"parent.py exited with {parent.returncode}: {err}")
                gevent.sleep(0.05)
    with client:
        assert read_to_eof(client) == NORMAL
    os.killpg(parent.pid, signal.SIGINT)
    _, err = parent.communicate(timeout=TIMEOUT)
    assert (parent.returncode, err) == (-signal.SIGINT, b"")


# -- examples/priority from its own folder: both clients -------------------


def test_priority_example_from_its_own_folder(popen):
    # Its folder holds subprocess.py: the issue's `cd examples/priority &&
    # python -m geventfork parent.py 8123` failed inside patch_all().
    parent = gevent.subprocess.Popen(
        [sys.executable, "-m", "geventfork", "parent.py", "0", "127.0.0.2", "127.0.0.1"],
        cwd=os.path.join(ROOT, "examples", "priority"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=python_env(),
        start_new_session=True,
    )
    popen.append(parent)
    with gevent.Timeout(2 * TIMEOUT, AssertionError("parent.py never said where it listens")):
        line = parent.stdout.readline().decode()
    match = re.search(r"listening on [\d.]+:(\d+)", line)
    assert match, (line, parent.stderr.read() if parent.poll() is not None else "")
    port = int(match.group(1))
    assert ask(port, source="127.0.0.1") == NORMAL
    assert ask(port, source="127.0.0.2") == SPECIAL
    os.killpg(parent.pid, signal.SIGINT)
    out, err = parent.communicate(timeout=TIMEOUT)
    assert (parent.returncode, err) == (-signal.SIGINT, b"")
