"""``geventfork.fork()`` and ``ChildProcess``, with real child processes.

Each test forks one or two scripts from ``tests/children/`` (through the
``spawn_child`` fixture, which stops them at teardown) and waits on events,
each wait bounded.
"""

import datetime
import os
import signal
import socket
import subprocess
import sys

import gevent
import pytest
from gevent.event import AsyncResult

import geventfork
from geventfork.errors import (
    ChannelClosedError,
    GeventforkError,
    InvalidHandleTypeError,
    SerializationError,
)
from helpers import (
    CHILDREN_DIR,
    TIMEOUT,
    MiB,
    children_of,
    closed_socket,
    inbox,
    items_in,
    kill_quietly,
    next_event,
    python_env,
    recorder,
    take,
    wait_gone,
)


# -- messages -------------------------------------------------------------

JSON_MESSAGES = [
    None,
    True,
    0,
    -1.5,
    2**62,
    "",
    "héllo ✓",
    [],
    {},
    [1, "two", None],
    {"nested": {"list": [1, 2, {"deep": True}]}, "unicode": "日本"},
]
PICKLE_MESSAGES = [
    None,
    b"\x00\xffbytes",
    (1, 2),
    {1, 2, 3},
    frozenset("ab"),
    3 + 4j,
    datetime.datetime(2024, 1, 2, 3, 4, 5),
    {"tuple_key": (1, "a")},
]


@pytest.mark.parametrize(
    "serialization, messages, expected",
    [
        # JSON has no tuples: they come back as lists.
        ("json", JSON_MESSAGES + [(1, 2)], JSON_MESSAGES + [[1, 2]]),
        ("pickle", PICKLE_MESSAGES, PICKLE_MESSAGES),
    ],
)
def test_messages_round_trip(spawn_child, serialization, messages, expected):
    child = spawn_child("echo.py", serialization=serialization)
    replies = inbox(child)
    for message in messages:
        assert child.send(message) is True
    assert take(replies, len(messages)) == expected


def test_ten_thousand_messages_keep_their_order(spawn_child):
    child = spawn_child("echo.py")
    replies = inbox(child)
    for i in range(10_000):
        child.send(i)
    assert take(replies, 10_000) == list(range(10_000))


@pytest.mark.parametrize("serialization", ["json", "pickle"])
def test_16_mib_message_round_trip(spawn_child, serialization):
    message = "x" * (16 * MiB) if serialization == "json" else os.urandom(16 * MiB)
    child = spawn_child("echo.py", serialization=serialization)
    replies = inbox(child)
    sent = AsyncResult()
    assert child.send(message, callback=sent.set) is False  # past the high-water mark
    assert sent.get(timeout=TIMEOUT) is None
    assert take(replies) == [message]


def test_send_returns_and_calls_back(spawn_child):
    child = spawn_child("echo.py")
    first = next_event(child, "message")
    replies = inbox(child)
    calls = []
    assert child.send("small", callback=calls.append) is True
    # The kernel's buffer (about 208 KiB) takes what it can at once; more than
    # 128 KiB of the rest is queued.
    assert child.send("x" * 1_000_000, callback=calls.append) is False
    assert take(replies, 2) == ["small", "x" * 1_000_000]  # delivered all the same
    assert first.get(timeout=TIMEOUT) == ("small", None)  # 'message'(message, handle)
    assert calls == [None, None]  # each callback once, once handed to the kernel
    assert child.send("small again") is True  # the queue drained


@pytest.mark.parametrize("keep_open", [False, True])
def test_send_a_socket_handle(spawn_child, keep_open):
    child = spawn_child("handle_writer.py")
    replies = inbox(child)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        acked = AsyncResult()
        child.send("through the handle", theirs, {"keep_open": keep_open}, callback=acked.set)
        assert acked.get(timeout=TIMEOUT) is None
        assert take(replies) == ["written"]
        assert (theirs.fileno() >= 0) is keep_open  # our copy closed on the ACK unless kept
        ours.settimeout(TIMEOUT)
        received = ours.recv(100)
        assert received == b"through the handle"
        if not keep_open:
            assert ours.recv(100) == b""  # the child's copy was the last one


@pytest.mark.parametrize(
    "serialization, bad_sends",
    [
        (
            "json",
            [
                (object(), None, SerializationError, "ERR_IPC_SERIALIZATION"),
                ({"set": {1}}, None, SerializationError, "ERR_IPC_SERIALIZATION"),
                ("message", object(), InvalidHandleTypeError, "ERR_INVALID_HANDLE_TYPE"),
            ],
        ),
        (
            "pickle",
            [
                (lambda: None, None, SerializationError, "ERR_IPC_SERIALIZATION"),
                ("message", 5, InvalidHandleTypeError, "ERR_INVALID_HANDLE_TYPE"),
                ("message", closed_socket(), InvalidHandleTypeError, "ERR_INVALID_HANDLE_TYPE"),
            ],
        ),
    ],
)
def test_send_raises_before_queueing(spawn_child, serialization, bad_sends):
    child = spawn_child("echo.py", serialization=serialization)
    replies = inbox(child)
    for message, handle, error, code in bad_sends:
        with pytest.raises(error) as caught:
            child.send(message, handle)
        assert caught.value.code == code
        assert isinstance(caught.value, GeventforkError) and isinstance(caught.value, TypeError)
    child.send("after")
    assert take(replies) == ["after"]  # nothing of the failed sends went out


# -- spawning -------------------------------------------------------------


def test_spawn_event_pid_and_spawnargs(spawn_child):
    child = spawn_child("report.py", "a", 2)
    spawned = next_event(child, "spawn")
    report = inbox(child)
    assert isinstance(child.pid, int) and child.pid > 0
    assert spawned.get(timeout=TIMEOUT) == ()
    assert take(report)[0]["pid"] == child.pid
    script = os.path.join(CHILDREN_DIR, "report.py")
    assert child.spawnargs[0] == sys.executable
    assert child.spawnargs[-3:] == [script, "a", "2"]
    assert child.stdin is child.stdout is child.stderr is None  # not silent


def test_fork_a_dotted_module_name(children):
    # With cwd on the child's sys.path (as `python -m` does), "echo" is tests/children/echo.py.
    child = geventfork.fork("echo", cwd=CHILDREN_DIR)
    children.append(child)
    replies = inbox(child)
    child.send("by module name")
    assert take(replies) == ["by module name"]


def test_spawn_failure_emits_error(children):
    child = geventfork.fork(os.path.join(CHILDREN_DIR, "echo.py"), exec_path="/nonexistent/python")
    children.append(child)
    failed = next_event(child, "error")
    (err,) = failed.get(timeout=TIMEOUT)
    assert isinstance(err, FileNotFoundError)
    assert child.pid is None
    assert not child.connected
    with pytest.raises(ChildProcessError):
        child.wait(timeout=TIMEOUT)


@pytest.mark.parametrize("given", [False, True], ids=["defaults", "given"])
def test_exec_argv_cwd_env_and_monkey(spawn_child, tmp_path, monkeypatch, given):
    monkeypatch.setenv("GEVENTFORK_TEST_INHERITED", "from the parent")
    options = {}
    if given:
        options = {
            "exec_argv": ["-O"],
            "cwd": str(tmp_path),
            "env": {"GEVENTFORK_TEST_GIVEN": "given", "PATH": os.environ.get("PATH", "")},
            "monkey": False,
        }
    report = take(inbox(spawn_child("report.py", **options)))[0]
    assert report["optimize"] == (1 if given else 0)
    assert report["patched"] is not given  # monkey=False: gevent did not patch the child
    assert report["cwd"] == (str(tmp_path) if given else os.getcwd())
    env = report["env"]
    if given:
        assert env["GEVENTFORK_TEST_GIVEN"] == "given"
        assert "GEVENTFORK_TEST_INHERITED" not in env
    else:
        assert env["GEVENTFORK_TEST_INHERITED"] == "from the parent"
    # The runner takes its own variables out before the script runs.
    assert not [name for name in env if name.startswith("GEVENTFORK_") and "_TEST_" not in name]


@pytest.mark.parametrize("silent", [True, False])
def test_silent_pipes_stdout_and_stderr(spawn_child, capfd, silent):
    child = spawn_child("say.py", "to stdout", "to stderr", silent=silent)
    assert child.wait(timeout=TIMEOUT) == 0
    if silent:
        with gevent.Timeout(TIMEOUT):
            assert child.stdout.read() == b"to stdout"
            assert child.stderr.read() == b"to stderr"
    else:
        assert child.stdout is None and child.stderr is None
        out, err = capfd.readouterr()  # inherited: the child wrote to our fds
        assert "to stdout" in out and "to stderr" in err


# -- exit, close and kill -------------------------------------------------


@pytest.mark.parametrize(
    "script, args, kill, code, signal_code, status",
    [
        ("exit_with.py", ["0"], None, 0, None, 0),
        ("exit_with.py", ["3"], None, 3, None, 3),
        ("sleeper.py", [], (signal.SIGKILL,), None, "SIGKILL", -9),
        ("sleeper.py", [], (), None, "SIGTERM", -15),  # kill() defaults to SIGTERM
    ],
    ids=["exit-0", "exit-3", "SIGKILL", "default-SIGTERM"],
)
def test_exit_and_close(spawn_child, script, args, kill, code, signal_code, status):
    child = spawn_child(script, *args)
    events = recorder(child, "exit", "disconnect", "close")
    closed = next_event(child, "close")
    if kill is not None:
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.05)
        assert child.exit_code is None and child.signal_code is None
        assert child.kill(*kill) is True
    assert child.wait(timeout=TIMEOUT) == status
    assert (child.exit_code, child.signal_code) == (code, signal_code)
    assert child.killed is (kill is not None)
    assert closed.get(timeout=TIMEOUT) == (code, signal_code)
    seen = items_in(events)
    assert seen[-1] == ("close", code, signal_code)
    assert ("exit", code, signal_code) in seen and ("disconnect",) in seen
    assert not child.connected
    assert child.kill() is False  # nothing left to signal


@pytest.mark.parametrize(
    "options, status, signal_code",
    [
        ({}, -signal.SIGTERM, "SIGTERM"),
        ({"kill_signal": signal.SIGKILL}, -signal.SIGKILL, "SIGKILL"),
    ],
    ids=["default-SIGTERM", "SIGKILL"],
)
def test_timeout_option_kills_with_kill_signal(spawn_child, options, status, signal_code):
    child = spawn_child("sleeper.py", timeout=0.2, **options)
    assert child.wait(timeout=TIMEOUT) == status
    assert child.signal_code == signal_code
    assert child.killed


# -- disconnect -----------------------------------------------------------


@pytest.mark.parametrize("side", ["parent", "child"])
def test_disconnect(spawn_child, side):
    child = spawn_child("count_messages.py")
    disconnected = next_event(child, "disconnect")
    assert child.connected
    for i in range(100):
        child.send(i)
    if side == "parent":
        child.disconnect()  # flushes the 100 queued messages first
    else:
        child.send("disconnect")  # the child calls process.disconnect()
    assert disconnected.get(timeout=TIMEOUT) == ()
    assert not child.connected
    # The child's 'disconnect' listener exits with the number of messages it got.
    assert child.wait(timeout=TIMEOUT) == (100 if side == "parent" else 101)

    # A channel known to be closed: send() raises, with or without a callback.
    called = []
    with pytest.raises(ChannelClosedError) as info:
        child.send("too late", callback=called.append)
    assert info.value.code == "ERR_IPC_CHANNEL_CLOSED" and isinstance(info.value, GeventforkError)
    with pytest.raises(ChannelClosedError):
        child.send("too late")
    gevent.sleep(0.05)
    assert called == []


# -- ref / unref ----------------------------------------------------------


@pytest.mark.parametrize("calls, exits", [(["unref"], True), (["unref", "ref"], False)])
def test_unref_lets_the_parent_exit(popen, calls, exits):
    parent = gevent.subprocess.Popen(
        [sys.executable, "-m", "geventfork", os.path.join(CHILDREN_DIR, "fork_echo.py"), *calls],
        stdout=subprocess.PIPE,
        env=python_env(),
    )
    popen.append(parent)
    with gevent.Timeout(TIMEOUT):
        child_pid = int(parent.stdout.readline())
    try:
        if exits:
            assert parent.wait(timeout=TIMEOUT) == 0  # the connected child did not hold it
        else:
            with pytest.raises(subprocess.TimeoutExpired):
                parent.wait(timeout=0.3)
            parent.terminate()
        assert wait_gone(child_pid), "the orphaned child did not exit with its channel"
    finally:
        kill_quietly(child_pid)


# -- kill() by name, wait() after 'exit' ----------------------------------


@pytest.mark.parametrize("sig", ["SIGKILL", "KILL", signal.SIGKILL, int(signal.SIGKILL)])
def test_kill_takes_a_number_a_signals_or_a_name(spawn_child, sig):
    child = spawn_child("sleeper.py")
    assert child.kill(sig) is True
    assert child.wait(timeout=TIMEOUT) == -signal.SIGKILL
    assert (child.exit_code, child.signal_code, child.killed) == (None, "SIGKILL", True)
    assert child.kill("SIGKILL") is False  # gone


@pytest.mark.parametrize(
    "sig, error, message",
    [
        ("SIGNOPE", ValueError, "unknown signal 'SIGNOPE'"),
        ("sigkill", ValueError, "unknown signal 'sigkill'"),  # as Node: names are upper case
        (99999, ValueError, "unknown signal 99999"),
        (9.0, TypeError, "a signal is a number or a name such as 'SIGKILL', not float"),
    ],
)
def test_kill_rejects_an_unknown_signal(spawn_child, sig, error, message):
    child = spawn_child("sleeper.py")
    with pytest.raises(error) as info:
        child.kill(sig)
    assert str(info.value) == message
    assert child.connected and child.exit_code is None  # nothing was sent


def test_kill_signal_option_takes_a_name(spawn_child):
    child = spawn_child("sleeper.py", timeout=0.2, kill_signal="SIGKILL")
    assert child.wait(timeout=TIMEOUT) == -signal.SIGKILL
    with pytest.raises(ValueError, match="unknown signal 'SIGNOPE'"):
        geventfork.fork(os.path.join(CHILDREN_DIR, "sleeper.py"), kill_signal="SIGNOPE")


def test_wait_returns_after_the_exit_listeners(spawn_child):
    child = spawn_child("exit_with.py", 7)
    events = []

    @child.on("exit")
    def slow_listener(code, signal_code):
        gevent.sleep(0.2)  # a listener that yields must still finish first
        events.append(("exit", code, signal_code))

    assert child.wait(timeout=TIMEOUT) == 7
    assert events == [("exit", 7, None)]
    assert (child.exit_code, child.signal_code) == (7, None)
    assert child.wait(timeout=0) == 7  # again, at once


def test_wait_from_an_exit_listener_returns_at_once(spawn_child):
    child = spawn_child("exit_with.py", 5)
    waited = AsyncResult()
    child.on("exit", lambda code, signal_code: waited.set(child.wait(timeout=1)))
    assert waited.get(timeout=TIMEOUT) == 5


def test_wait_times_out(spawn_child):
    child = spawn_child("sleeper.py")
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.1)


# -- stdio ----------------------------------------------------------------


def read_all(stream):
    with gevent.Timeout(TIMEOUT):
        return stream.read()


def test_stdio_ignore_inherit_pipe(spawn_child, capfd):
    # Pool keeps the tail of a worker's stderr this way (stdout inherited).
    child = spawn_child("pipe_stdio.py", stdio=("ignore", "inherit", "pipe"))
    assert child.stdin is None and child.stdout is None
    assert read_all(child.stderr) == b"to stderr\n"
    assert child.wait(timeout=TIMEOUT) == 0
    out, err = capfd.readouterr()
    assert out == "to stdout\nstdin: ''\n" and "to stderr" not in err


def test_stdio_pipe_ignore_ignore(spawn_child, capfd):
    child = spawn_child("pipe_stdio.py", stdio=["pipe", "ignore", "ignore", "ipc"])  # Node's form
    assert child.stdout is None and child.stderr is None
    child.stdin.write(b"hello")
    child.stdin.close()
    assert child.wait(timeout=TIMEOUT) == 0
    out, err = capfd.readouterr()
    assert "to stdout" not in out and "to stderr" not in err


@pytest.mark.parametrize("options", [{"stdio": "pipe"}, {"silent": True}, {"stdio": ("pipe",) * 3}])
def test_stdio_pipe_is_silent(spawn_child, options):
    child = spawn_child("pipe_stdio.py", **options)
    child.stdin.close()
    assert read_all(child.stdout) == b"to stdout\nstdin: ''\n"
    assert read_all(child.stderr) == b"to stderr\n"
    assert child.wait(timeout=TIMEOUT) == 0


@pytest.mark.parametrize(
    "options, error",
    [
        ({"silent": True, "stdio": "pipe"}, TypeError),
        ({"stdio": ("pipe", "pipe")}, ValueError),
        ({"stdio": ("pipe", "pipe", "tty")}, ValueError),
        ({"stdio": ("pipe", "pipe", 1)}, ValueError),
    ],
)
def test_bad_stdio_raises_before_starting(children, options, error):
    with pytest.raises(error):
        children.append(geventfork.fork(os.path.join(CHILDREN_DIR, "echo.py"), **options))
    assert children == []


# -- a script that does not exist -----------------------------------------


@pytest.mark.parametrize("cwd", [None, "given"])
def test_fork_of_a_missing_file_raises_at_once(tmp_path, monkeypatch, cwd):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    options = {"cwd": str(tmp_path / "elsewhere")} if cwd else {}
    before = set(children_of())
    with pytest.raises(FileNotFoundError) as info:
        geventfork.fork("nope.py", **options)
    tried = tmp_path / "elsewhere" / "nope.py" if cwd else tmp_path / "nope.py"
    assert info.value.filename == str(tried)
    where = f"cwd={str(tmp_path / 'elsewhere')!r}" if cwd else "the current directory"
    assert (
        str(info.value)
        == f"[Errno 2] cannot fork: no such file ('nope.py' taken from {where}): '{tried}'"
    )
    assert set(children_of()) == before  # no process started


def test_fork_resolves_a_relative_path_from_the_current_directory(children, monkeypatch):
    monkeypatch.chdir(CHILDREN_DIR)
    child = geventfork.fork("echo.py")
    children.append(child)
    assert child.spawnargs[-1] == os.path.join(CHILDREN_DIR, "echo.py")  # as Node's argv[1]
    replies = inbox(child)
    child.send("found")
    assert take(replies) == ["found"]


def test_pool_of_a_missing_file_raises_at_once(tmp_path):
    before = set(children_of())
    with pytest.raises(FileNotFoundError, match="no such file"):
        geventfork.Pool(str(tmp_path / "nope.py"), 2)
    assert set(children_of()) == before


def test_children_started_at_once_leave_sigint_unblocked(children):
    """Popen yields while a child starts: overlapping starts must not leave
    SIGINT blocked in the parent (Ctrl-C would stop working)."""
    import geventfork

    def start():
        children.append(geventfork.fork(os.path.join(CHILDREN_DIR, "sleeper.py")))

    gevent.joinall([gevent.spawn(start) for _ in range(4)], timeout=TIMEOUT, raise_error=True)
    assert len(children) == 4
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_max_queued_bounds_what_a_child_that_reads_nothing_costs(spawn_child):
    """A child stuck in a blocking call reads nothing: past ``max_queued``,
    ``send()`` raises ``ChannelBusyError`` and queues nothing more."""
    from geventfork.errors import ChannelBusyError

    child = spawn_child("stuck.py", max_queued=1024 * 1024, monkey=False)
    chunk = "x" * (64 * 1024)
    accepted = 0
    with pytest.raises(ChannelBusyError) as info:
        for _ in range(1000):
            child.send(chunk)
            accepted += 1
    assert info.value.code == "ERR_IPC_BUSY"
    assert accepted < 40, "the queue grew past max_queued"
    assert child.connected


@pytest.mark.parametrize("bad", [0, -1])
def test_max_queued_must_be_positive(bad):
    with pytest.raises(ValueError, match="max_queued"):
        geventfork.fork(os.path.join(CHILDREN_DIR, "sleeper.py"), max_queued=bad)


def test_where_there_is_no_fork_server_children_are_spawned(spawn_child):
    # Python 3.9 (and anything but Linux): every child is spawned, as before.
    from geventfork import _forkserver

    child = spawn_child("echo.py")
    replies = inbox(child)
    child.send("ping")
    assert take(replies) == ["ping"]
    spawned = not isinstance(child._popen, _forkserver.Adopted)
    assert spawned == (not _forkserver.available())
