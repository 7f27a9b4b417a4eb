"""The fork server: children forked from a template, as spawned children are.

Real processes throughout. The leak checks of conftest.py run after each
test (the templates' own socket and process excepted, which outlive tests
as they outlive ``fork()``s).
"""

import contextlib
import json
import os
import signal
import subprocess
import sys

import gevent
import pytest
from helpers import (
    CHILDREN_DIR,
    TIMEOUT,
    children_of,
    fd_table,
    gone,
    inbox,
    is_template,
    next_event,
    proc_stat,
    python_env,
    take,
    take_one,
    wait_gone,
    wait_until,
)

import geventfork
from geventfork import _forkserver, _templates
from geventfork._forkserver import MAX_REPLY, encode_frame, recv_frame, send_frame

pytestmark = pytest.mark.skipif(
    not _forkserver.available(), reason="no fork server here (Python 3.9, or not Linux)"
)

#: Fields of fs_report.py that differ between any two children.
PER_CHILD = ("pid", "random", "fileno", "fds")


def forked(child):
    """Whether ``child`` came from a template (else it was spawned)."""
    return isinstance(child._popen, _forkserver.Adopted)


def template_pids():
    return {pid for pid, _fd in _forkserver.templates()}


def report(spawn_child, *args, **options):
    child = spawn_child("fs_report.py", *args, **options)
    (message,) = take(inbox(child), what="report")
    assert child.wait(TIMEOUT) == 0
    return child, message


# -- the child is a spawned child's double --------------------------------------------


def test_a_forked_child_sees_what_a_spawned_one_sees(spawn_child, tmp_path):
    options = {"cwd": str(tmp_path), "env": {**os.environ, "FS_VALUE": "é 1"}}
    spawned, by_spawn = report(spawn_child, "a", "b c", start_method="spawn", **options)
    child, by_fork = report(spawn_child, "a", "b c", **options)
    assert not forked(spawned) and forked(child)
    for field in PER_CHILD:
        by_spawn.pop(field), by_fork.pop(field)
    assert by_fork == by_spawn
    assert by_fork["argv"][1:] == [os.path.join(CHILDREN_DIR, "fs_report.py"), "a", "b c"]
    assert by_fork["cwd"] == str(tmp_path)
    assert by_fork["env"]["FS_VALUE"] == "é 1"
    assert not [name for name in by_fork["env"] if name.startswith("GEVENTFORK_")]
    assert by_fork["ppid"] == os.getpid()
    assert by_fork["blocked"] == "0000000000000000"  # SIGINT unblocked by the runner
    assert by_fork["cmdline"] == child.spawnargs


def test_children_get_our_ignored_signals_umask_and_limits_as_now(spawn_child):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    umask = os.umask(0o027)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft - 1, hard))
    try:
        _, by_spawn = report(spawn_child, start_method="spawn")
        child, by_fork = report(spawn_child)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        os.umask(umask)
        signal.signal(signal.SIGHUP, previous)
    assert forked(child)
    assert by_fork["umask"] == by_spawn["umask"] == 0o027
    assert by_fork["nofile"] == by_spawn["nofile"] == [soft - 1, hard]
    assert by_fork["ignored"] == by_spawn["ignored"]
    assert int(by_fork["ignored"], 16) & (1 << (signal.SIGHUP - 1))


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_channel_and_handles_work_as_with_spawn(spawn_child, method):
    import socket

    echo = spawn_child("echo.py", start_method=method)
    served = spawn_child("handle_echo.py", start_method=method)
    assert forked(echo) == forked(served) == (method == "forkserver")
    echoes, replies = inbox(echo), inbox(served)
    echo.send({"n": [1, 2]})
    assert take_one(echoes) == {"n": [1, 2]}
    left, right = socket.socketpair()
    with right:
        served.send("handle", left)  # ours is closed once the child has it
        assert take_one(replies)["got"]["class"] == "gevent.socket"
        right.sendall(b"ping\n")
        assert right.recv(100) == b"child ping\n"


def test_the_script_sees_patched_modules(spawn_child):
    child = spawn_child("check_patched.py", silent=True)
    assert forked(child)
    assert child.wait(TIMEOUT) == 0
    seen = json.loads(child.stdout.read())
    assert all(seen.values()), seen


def test_monkey_false_gets_an_unpatched_template(spawn_child):
    child, by_fork = report(spawn_child, monkey=False)
    assert forked(child)
    assert by_fork["patched"] is False


# -- exit statuses, signals, wait() and kill() ------------------------------------------


@pytest.mark.parametrize("status", [0, 3])
def test_exit_statuses_reach_exit_and_wait(spawn_child, status):
    child = spawn_child("exit_with.py", str(status))
    exited = next_event(child, "exit")
    assert forked(child)
    assert exited.get(timeout=TIMEOUT) == (status, None)
    assert child.wait(TIMEOUT) == status
    assert (child.exit_code, child.signal_code) == (status, None)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_signals_reach_exit_and_wait(spawn_child, sig):
    child = spawn_child("sleeper.py")
    exited = next_event(child, "exit")
    assert forked(child)
    assert child.kill(sig) is True
    assert exited.get(timeout=TIMEOUT) == (None, sig.name)
    assert child.wait(TIMEOUT) == -sig
    assert child.killed
    assert child.kill() is False  # gone


def test_wait_times_out_on_a_running_child(spawn_child):
    child = spawn_child("sleeper.py")
    assert forked(child)
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.2)
    child.kill("KILL")
    assert child.wait(TIMEOUT) == -signal.SIGKILL


def test_patched_waitpid_knows_a_forked_child(spawn_child):
    child = spawn_child("exit_with.py", "5")
    assert forked(child)
    pid, status = os.waitpid(child.pid, 0)  # gevent's: it watches the pid
    assert (pid, os.waitstatus_to_exitcode(status)) == (child.pid, 5)


def test_fifty_children_at_once_all_answer(spawn_child):
    children = []

    def start(index):
        child = spawn_child("echo.py")
        replies = inbox(child)
        child.send(index)
        children.append(child)
        return take_one(replies)

    greenlets = [gevent.spawn(start, index) for index in range(50)]
    gevent.joinall(greenlets, timeout=10 * TIMEOUT, raise_error=True)
    assert sorted(g.value for g in greenlets) == list(range(50))
    assert all(forked(child) for child in children)
    assert len({child.pid for child in children}) == 50


# -- stdio ----------------------------------------------------------------------


@pytest.mark.parametrize("options", [{"silent": True}, {"stdio": "pipe"}])
def test_pipes(spawn_child, options):
    child = spawn_child("pipe_stdio.py", **options)
    assert forked(child)
    child.stdin.write(b"data")
    child.stdin.close()
    assert child.wait(TIMEOUT) == 0
    assert child.stdout.read() == b"to stdout\nstdin: 'data'\n"
    assert child.stderr.read() == b"to stderr\n"


def test_ignore_and_mixed_stdio(spawn_child):
    child = spawn_child("say.py", "out", "err", stdio=["ignore", "pipe", "ignore"])
    assert forked(child)
    assert child.wait(TIMEOUT) == 0
    assert child.stdin is None and child.stderr is None
    assert child.stdout.read() == b"out"


# -- where the fork server does not apply -----------------------------------------


@pytest.mark.parametrize("options", [{"start_method": "spawn"}, {"exec_argv": ["-O"]}])
def test_other_options_spawn(spawn_child, options):
    child = spawn_child("echo.py", **options)
    assert not forked(child)
    replies = inbox(child)
    child.send("spawned")
    assert take_one(replies) == "spawned"


def test_our_own_python_given_as_exec_path_forks(spawn_child):
    assert forked(spawn_child("echo.py", exec_path=sys.executable))


def test_an_unknown_start_method_is_refused():
    with pytest.raises(ValueError, match="start_method must be one of"):
        geventfork.fork(os.path.join(CHILDREN_DIR, "echo.py"), start_method="fork")


def test_a_pool_forks_its_workers_from_the_template(children):
    pool = geventfork.Pool(os.path.join(CHILDREN_DIR, "pool_reply.py"), 2)
    try:
        wait_until(lambda: len(pool.workers) == 2, "two workers")
        assert all(forked(worker) for worker in pool.workers)
        done = gevent.event.AsyncResult()
        pool.send("hello", callback=done.set)
        assert done.get(timeout=TIMEOUT) is None
    finally:
        pool.close(TIMEOUT)


# -- the template's life ------------------------------------------------------------


def last_template():
    """The template used last."""
    return list(_templates._templates.values())[-1]


def test_a_dead_template_is_replaced(spawn_child):
    first = spawn_child("echo.py")
    assert forked(first)
    old = last_template().pid
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: old not in template_pids(), "the template dropped")
    child = spawn_child("echo.py")
    assert forked(child)
    assert old not in template_pids() and template_pids()
    for each in (first, child):  # the first child lives on without its template
        replies = inbox(each)
        each.send("still here")
        assert take_one(replies) == "still here"


def test_a_hung_template_costs_a_spawn_not_a_failure(spawn_child, monkeypatch):
    monkeypatch.setattr(_templates, "REPLY_TIMEOUT", 0.5)
    _templates.drop_all()  # a new one, with the short timeout
    spawn_child("echo.py")
    (pid,) = template_pids()
    os.kill(pid, signal.SIGSTOP)
    try:
        child = spawn_child("echo.py")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert not forked(child)
    assert pid not in template_pids()
    replies = inbox(child)
    child.send("spawned")
    assert take_one(replies) == "spawned"


def test_templates_are_ours_and_keep_sigint_blocked(spawn_child):
    spawn_child("echo.py")
    for pid in template_pids():
        assert is_template(pid)
        assert proc_stat(pid)[1] == str(os.getpid())
        assert int(_status(pid, "SigBlk"), 16) & (1 << (signal.SIGINT - 1))
        assert int(_status(pid, "PPid")) == os.getpid()
        fds = set(fd_table(pid))
        assert fds == {0, 1, 2, _template_socket_fd(pid)}, fd_table(pid)


def _status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split()[1]
    raise AssertionError(f"no {field} for {pid}")


def _template_socket_fd(pid):
    (fd,) = [fd for fd, target in fd_table(pid).items() if target.startswith("socket:")]
    return fd


def test_an_orphaned_grandchild_is_not_ours(spawn_child, tmp_path):
    """No subreaper: a grandchild left behind goes to init, as with spawn."""
    pid_file = tmp_path / "grandchild"
    child = spawn_child("spawn_grandchild.py", str(pid_file))
    assert forked(child)
    assert child.wait(TIMEOUT) == 0
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), "the pid file")
    grandchild = int(pid_file.read_text())
    try:
        assert grandchild not in children_of(templates=True)
    finally:
        os.kill(grandchild, signal.SIGKILL)


def test_bad_requests_get_an_answer_and_leave_no_fd_in_the_template(spawn_child):
    spawn_child("echo.py")  # a template, ready
    template = last_template()
    before = fd_table(template.pid)
    import socket as stdlib_socket

    left, right = stdlib_socket.socketpair()
    with left, right, template._lock:
        sock = template.sock
        for frame, fds in [
            (encode_frame({"argv": "not a list"}), [left.fileno(), right.fileno()]),
            (encode_frame(["a list"]), [left.fileno()]),
            (b"\x00\x00\x00\x03abc", [right.fileno()]),  # not JSON
            (b"\xff\xff\xff\xff", [left.fileno()]),  # over the bound: the rest is read as frames
        ]:
            send_frame(sock, frame, fds)
            reply, _ = recv_frame(sock, MAX_REPLY)
            assert "error" in reply, reply
            if frame.startswith(b"\xff"):
                break
    wait_until(lambda: fd_table(template.pid) == before, "the template's fds back")
    assert not gone(template.pid)


def test_the_template_and_children_end_with_a_killed_parent(popen):
    proc = subprocess.Popen(
        [sys.executable, "-m", "geventfork", os.path.join(CHILDREN_DIR, "fs_parent.py")],
        env=python_env(),
        stdout=subprocess.PIPE,
    )
    popen.append(proc)
    with gevent.Timeout(3 * TIMEOUT, AssertionError("the parent said nothing")):
        started = json.loads(proc.stdout.readline())
    assert started["forked"]
    assert proc_stat(started["template"])[1] == str(proc.pid)
    assert proc_stat(started["child"])[1] == str(proc.pid)  # the parent's, not the template's
    proc.kill()
    assert proc.wait(TIMEOUT) == -signal.SIGKILL
    assert wait_gone(started["template"]), "the template outlived its parent"
    assert wait_gone(started["child"]), "the child outlived its parent"


def test_a_parent_that_exits_reaps_its_templates_first(popen):
    proc = subprocess.Popen(
        [sys.executable, "-m", "geventfork", os.path.join(CHILDREN_DIR, "fs_parent.py"), "exit"],
        env=python_env(),
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    popen.append(proc)
    with gevent.Timeout(3 * TIMEOUT, AssertionError("the parent said nothing")):
        started = json.loads(proc.stdout.readline())
    assert proc.wait(TIMEOUT) == 0
    with pytest.raises(ProcessLookupError):  # nobody of its group is left
        os.killpg(proc.pid, 0)
    assert gone(started["template"])


def test_a_child_forks_from_a_template_of_its_own(spawn_child):
    child = spawn_child("fs_nested.py")
    assert forked(child)
    (message,) = take(inbox(child), what="the grandchild's answer")
    assert message["answer"] == "from the grandchild"
    assert message["forked"] is True
    assert message["template_parent"] == child.pid
    assert child.wait(TIMEOUT) == 0


def test_a_template_holds_no_child_s_own_variables(spawn_child):
    _templates.drop_all()
    env = {**os.environ, "FS_SECRET": "s3cret", "PYTHONFSTESTMARK": "start-up"}
    child = spawn_child("echo.py", env=env)
    assert forked(child)
    template = last_template()
    with open(f"/proc/{template.pid}/environ", "rb") as f:
        environ = f.read()
    assert b"s3cret" not in environ
    assert b"PYTHONFSTESTMARK=start-up" in environ  # PYTHON*: start-up's own


def test_a_process_made_by_os_fork_forgets_our_templates(spawn_child):
    spawn_child("echo.py")
    assert _forkserver.templates()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write, json.dumps(_forkserver.templates()).encode())
        os._exit(0)
    os.close(write)
    assert os.waitpid(pid, 0)[1] == 0  # gevent's: cooperative
    try:  # one read: gevent defers closing our write end to the loop
        assert json.loads(os.read(read, 65536)) == []
    finally:
        os.close(read)
    assert _forkserver.templates()  # ours are still ours
