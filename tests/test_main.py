"""The runner: ``python -m geventfork SCRIPT ARGS`` and ``geventfork.run()``.

Each test runs a tiny script (written to ``tmp_path``, or one of
``tests/children/``) in a fresh interpreter, registered in ``popen``, and
checks its output and exit status under a deadline.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import gevent
import pytest

from helpers import CHILDREN_DIR, TIMEOUT, python_env


def start(popen, *argv, **options):
    """Start ``python ARGV`` with piped stdout and stderr, registered in ``popen``."""
    proc = gevent.subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=python_env(),
        **options,
    )
    popen.append(proc)
    return proc


def run(popen, *argv, **options):
    """Run ``python ARGV`` to the end; return ``(status, stdout, stderr)`` as text."""
    proc = start(popen, *argv, **options)
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out.decode(), err.decode()


def script(tmp_path, source, name="script.py"):
    """Write ``source`` (dedented) to ``tmp_path / name``; return its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


# -- exit status ----------------------------------------------------------


@pytest.mark.parametrize(
    "source, status, stderr",
    [
        ("pass", 0, ""),
        ("import sys\nsys.exit(3)", 3, ""),
        ("import sys\nsys.exit()", 0, ""),
        ("import sys\nsys.exit('bye')", 1, "bye\n"),
        ("raise ValueError('boom')", 1, "Traceback"),
        # After the top level: SystemExit in a greenlet ends the hub, as with gevent.
        ("import gevent, sys\ngevent.spawn_later(0.05, sys.exit, 4)", 4, ""),
    ],
    ids=["nothing-left", "exit-3", "exit-none", "exit-message", "uncaught", "exit-in-greenlet"],
)
def test_exit_status(popen, tmp_path, source, status, stderr):
    code, _, err = run(popen, "-m", "geventfork", script(tmp_path, source))
    assert code == status
    if stderr == "Traceback":
        assert err.startswith("Traceback (most recent call last):")
        assert err.rstrip().endswith("ValueError: boom")
    else:
        assert err == stderr


def test_usage(popen):
    code, _, err = run(popen, "-m", "geventfork")
    assert code == 2 and err.startswith("usage:")


# -- what keeps the hub running -------------------------------------------

SERVER = """\
from geventfork import net

def on_connection(sock):
    print("connection", flush=True)
    sock.end()
    server.close()

server = net.create_server(on_connection)
server.listen(0, "127.0.0.1", callback=lambda: print(server.address()["port"], flush=True))
print("top level done", flush=True)
"""


def test_a_listening_server_keeps_it_running(popen, tmp_path):
    proc = start(popen, "-m", "geventfork", script(tmp_path, SERVER))
    with gevent.Timeout(TIMEOUT):
        assert proc.stdout.readline() == b"top level done\n"
        port = int(proc.stdout.readline())
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
        assert client.recv(10) == b""  # served, then closed
    out, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, out, err) == (0, b"connection\n", b"")


@pytest.mark.parametrize(
    "source",
    [
        "import gevent\ngevent.spawn_later(0.3, print, 'later')",
        "import gevent\ngevent.spawn(lambda: (gevent.sleep(0.3), print('later')))",
    ],
    ids=["timer", "greenlet"],
)
def test_a_live_greenlet_keeps_it_running(popen, tmp_path, source):
    path = script(tmp_path, source + "\nprint('top level done')")
    code, out, err = run(popen, "-m", "geventfork", path)
    assert (code, out, err) == (0, "top level done\nlater\n", "")


def test_a_connected_child_keeps_it_running(popen):
    # fork_echo.py's top level forks, sends "ping" and returns; the reply comes later.
    parent = os.path.join(CHILDREN_DIR, "fork_echo.py")
    code, out, err = run(popen, "-m", "geventfork", parent, "ping")
    assert (code, err) == (0, "")
    pid, reply = out.splitlines()
    assert int(pid) > 0 and reply == "ping"


# -- geventfork.run() and plain python ------------------------------------

DIFFERENTIAL = """\
import os
import pickle
import sys

import gevent

import geventfork


class Point:
    def __init__(self, x):
        self.x = x


def later():
    import __main__

    # After the top level: __main__ is still the script (pickle relies on it).
    print("later", __main__.__name__, hasattr(__main__, "Point"), sys.argv[1:])
    print("pickled", pickle.loads(pickle.dumps(Point(42))).x)


print(__name__, os.path.basename(__file__), sys.argv[1:])
print("path[0] is the script's folder", sys.path[0] == os.path.dirname(os.path.abspath(__file__)))
print("main", sys.modules["__main__"].Point is Point)
gevent.spawn_later(0.05, later)
geventfork.run()
print("after run")
sys.exit(5)
"""


def test_same_output_as_plain_python(popen, tmp_path):
    path = script(tmp_path, DIFFERENTIAL)
    plain = run(popen, path, "a", "b c")
    ours = run(popen, "-m", "geventfork", path, "a", "b c")
    assert ours == plain
    assert plain == (
        5,
        "__main__ script.py ['a', 'b c']\n"
        "path[0] is the script's folder True\n"
        "main True\n"
        "later __main__ True ['a', 'b c']\n"
        "pickled 42\n"
        "after run\n",
        "",
    )


def test_main_outlives_the_top_level(popen, tmp_path):
    # Greenlets that run after the top level still see the script as __main__:
    # pickle finds the script's classes there (serialization="pickle" relies on it).
    source = """\
        import pickle
        import gevent

        class Point:
            def __init__(self, x):
                self.x = x

        def later():
            import __main__
            copy = pickle.loads(pickle.dumps(Point(42)))
            print(__main__.__name__, __main__.Point is Point, copy.x)

        gevent.spawn_later(0.05, later)
    """
    assert run(popen, "-m", "geventfork", script(tmp_path, source)) == (0, "__main__ True 42\n", "")


def test_run_from_plain_python(popen, tmp_path):
    source = """\
        from gevent import monkey
        monkey.patch_all()
        import gevent, geventfork
        gevent.spawn_later(0.2, print, "later")
        print("run")
        geventfork.run()
        print("nothing left")
    """
    assert run(popen, script(tmp_path, source)) == (0, "run\nlater\nnothing left\n", "")


# -- import order ---------------------------------------------------------


def test_the_script_sees_patched_modules(popen):
    code, out, err = run(popen, "-m", "geventfork", os.path.join(CHILDREN_DIR, "check_patched.py"))
    assert (code, err) == (0, "")  # no MonkeyPatchWarning about modules imported too early
    assert json.loads(out) == {
        "socket": True,
        "threading": True,
        "select": True,
        "ssl": True,
        "socket_class": True,
        "main_thread": True,
    }


def test_import_geventfork_imports_neither_gevent_nor_socket(popen):
    code, out, err = run(
        popen,
        "-c",
        "import sys, geventfork; print('gevent' in sys.modules, 'socket' in sys.modules)",
    )
    assert (code, out, err) == (0, "False False\n", "")


def test_what_the_runner_imports_before_patching(popen):
    # What `python -m geventfork` loads before it calls patch_all(): the package,
    # its __main__ and _main. None of it may be something gevent patches.
    source = (
        "import sys; before = set(sys.modules); import geventfork, geventfork._main; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    code, out, err = run(popen, "-c", source)
    assert (code, err) == (0, "")
    loaded = set(out.split())
    assert {"geventfork", "geventfork._main"} <= loaded
    patched = {
        "socket",
        "ssl",
        "select",
        "selectors",
        "threading",
        "subprocess",
        "queue",
        "signal",
        "time",
        "gevent",
        "greenlet",
    }
    assert not {name for name in loaded if name.split(".")[0] in patched}


# -- the command line -----------------------------------------------------


def test_help_lists_usage_commands_and_the_readme(popen):
    for option in ("--help", "-h"):
        code, out, err = run(popen, "-m", "geventfork", option)
        assert (code, err) == (0, "")
        assert out.startswith("usage: geventfork")
        assert "run SCRIPT [ARGS...]" in out and "--version" in out and "README" in out


def test_version_comes_from_the_package(popen):
    import geventfork

    for option in ("--version", "-V"):
        assert run(popen, "-m", "geventfork", option) == (
            0,
            f"geventfork {geventfork.__version__}\n",
            "",
        )
    with open(os.path.join(os.path.dirname(CHILDREN_DIR), "..", "setup.cfg")) as f:
        assert "version = attr: geventfork.__version__" in f.read()  # one source


def test_run_command_is_the_same_as_a_script(popen, tmp_path):
    path = script(tmp_path, "import sys\nprint(sys.argv[1:])\nsys.exit(3)")
    assert run(popen, "-m", "geventfork", "run", path, "a", "--b") == (3, "['a', '--b']\n", "")
    assert run(popen, "-m", "geventfork", path, "a", "--b") == (3, "['a', '--b']\n", "")


def test_a_script_named_like_a_command_is_given_with_its_folder(popen, tmp_path):
    script(tmp_path, "print('the script named run')", name="run")
    assert run(popen, "-m", "geventfork", "./run", cwd=str(tmp_path)) == (
        0,
        "the script named run\n",
        "",
    )
    code, _, err = run(popen, "-m", "geventfork", "run", cwd=str(tmp_path))
    assert code == 2 and err.startswith("usage:") and "SCRIPT is missing" in err


def test_unknown_option_is_a_usage_error(popen):
    code, out, err = run(popen, "-m", "geventfork", "--frobnicate", "x.py")
    assert (code, out) == (2, "") and err.startswith("usage:")
    assert err.splitlines()[-1] == "geventfork: error: unknown option --frobnicate"


@pytest.mark.parametrize(
    "target, message",
    [
        ("missing.py", "geventfork: can't open file {path!r}: [Errno 2] No such file or directory"),
        ("folder", "geventfork: can't find '__main__' module in {path!r}"),
        ("no_such_module_here", "geventfork: No module named 'no_such_module_here'"),
        ("no_such_package.sub", "geventfork: No module named 'no_such_package'"),
    ],
)
def test_a_missing_script_or_module_is_one_line_and_status_2(popen, tmp_path, target, message):
    (tmp_path / "folder").mkdir()
    code, out, err = run(popen, "-m", "geventfork", target, cwd=str(tmp_path))
    assert (code, out) == (2, "")
    assert err == message.format(path=str(tmp_path / target)) + "\n"


def test_a_scripts_traceback_starts_at_the_script(popen, tmp_path):
    path = script(
        tmp_path,
        """\
        def fail():
            raise ValueError("boom")

        fail()
    """,
    )
    code, _, err = run(popen, "-m", "geventfork", path)
    _, _, plain = run(popen, path)
    assert code == 1
    assert err == plain  # the same as plain python: no frame of the runner
    lines = err.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1] == f'  File "{path}", line 4, in <module>'
    assert "geventfork" not in err and "runpy" not in err


def test_a_modules_traceback_starts_at_the_module(popen, tmp_path):
    (tmp_path / "failing.py").write_text("raise KeyError('k')\n")
    code, _, err = run(popen, "-m", "geventfork", "failing", cwd=str(tmp_path))
    assert code == 1
    assert err.splitlines()[:2] == [
        "Traceback (most recent call last):",
        f'  File "{tmp_path / "failing.py"}", line 1, in <module>',
    ]


def test_a_syntax_error_is_shown_as_python_shows_it(popen, tmp_path):
    path = script(tmp_path, "def broken(:\n    pass\n")
    code, _, err = run(popen, "-m", "geventfork", path)
    assert code == 1
    assert err == run(popen, path)[2]
    assert "SyntaxError" in err and "geventfork" not in err


# -- the top level closed fds ---------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "import os\nr, w = os.pipe()\nos.close(r)\nos.close(w)\n",
        "import os, socket\na, b = socket.socketpair()\n"
        "os.close(a.detach())\nos.close(b.detach())\n",
    ],
    ids=["pipe", "socketpair"],
)
def test_exits_after_the_top_level_closed_fds(popen, tmp_path, source):
    # gevent >= 25.8.1 defers these closes to a loop watcher; plain python exits at once.
    path = script(tmp_path, source + "print('done')")
    proc = start(popen, "-m", "geventfork", path)
    out, err = proc.communicate(timeout=2)  # hung forever before the fix
    assert (proc.returncode, out, err) == (0, b"done\n", b"")


# -- a user's file named after a standard module ---------------------------

SHADOW = """\
print("the user's {name}.py was imported")
"""

USES_SUBPROCESS = """\
import os
import subprocess

from gevent import monkey

import geventfork

child = geventfork.fork("child.py")
child.on("message", lambda message, handle: (print("child says", message), child.disconnect()))
print("parent sees the standard subprocess:", hasattr(subprocess, "Popen"),
      monkey.is_module_patched("subprocess"))
"""

CHILD = """\
import subprocess

from gevent import monkey

from geventfork import process

process.send(["standard subprocess", hasattr(subprocess, "Popen"),
              monkey.is_module_patched("socket")])
"""


@pytest.mark.parametrize("name", ["subprocess", "socket", "select"])
def test_a_user_file_named_after_a_standard_module(popen, tmp_path, name):
    # Node's example calls its child subprocess.js; ours, subprocess.py. It
    # sits in the current directory, which `python -m` puts on sys.path.
    script(tmp_path, SHADOW.format(name=name), name=f"{name}.py")
    script(tmp_path, USES_SUBPROCESS, name="parent.py")
    script(tmp_path, CHILD, name="child.py")
    code, out, err = run(popen, "-m", "geventfork", "parent.py", cwd=str(tmp_path))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "parent sees the standard subprocess: True True",
        "child says ['standard subprocess', True, True]",
    ]


def test_the_scripts_folder_is_first_on_sys_path(popen, tmp_path):
    # As with `python script.py`: the script imports its neighbours.
    (tmp_path / "sub").mkdir()
    script(tmp_path, "VALUE = 42\n", name="sub/neighbour.py")
    path = script(
        tmp_path, "import sys, neighbour\nprint(neighbour.VALUE, sys.path[0])", name="sub/main.py"
    )
    assert run(popen, "-m", "geventfork", path) == (0, f"42 {tmp_path / 'sub'}\n", "")
