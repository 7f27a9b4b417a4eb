"""``geventfork serve``'s command line, config file and TARGET loading.

``config.parse`` and ``target.kind`` are tested in this process; what a user
sees (one line, the exit status, no traceback) through ``python -m geventfork
serve`` in a fresh interpreter, under a deadline.
"""

import ipaddress
import os
import subprocess
import sys
import textwrap

import gevent
import pytest

from geventfork.serve import config, target
from geventfork.serve.settings import Bind, Route, Settings
from helpers import TIMEOUT, python_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples", "serve")


def serve(popen, *args, cwd=None):
    """Run ``python -m geventfork serve ARGS``; return ``(status, stdout, stderr)``."""
    proc = gevent.subprocess.Popen(
        [sys.executable, "-m", "geventfork", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=python_env(),
        cwd=cwd,
    )
    popen.append(proc)
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out.decode(), err.decode()


def write(folder, name, source):
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def usage_error(capsys, argv):
    """``config.parse(argv)``'s usage error: its one line (status 2 checked)."""
    with pytest.raises(SystemExit) as exit_info:
        config.parse(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0].startswith("usage: geventfork serve")
    assert lines[-1].startswith("geventfork serve: error: ")
    assert "Traceback" not in err
    return lines[-1]


# -- parsing: each option -------------------------------------------------------


def test_defaults_are_the_settings_defaults():
    assert config.parse(["app:app"]) == Settings(target="app:app")


@pytest.mark.parametrize(
    "value, bind",
    [
        ("127.0.0.1:8001", Bind("127.0.0.1", 8001)),
        ("localhost:0", Bind("localhost", 0)),
        ("LocalHost:80", Bind("localhost", 80)),
        (":9000", Bind("", 9000)),
        ("0.0.0.0", Bind("0.0.0.0", 8000)),  # gunicorn: a host alone is port 8000
        ("[::1]:8080", Bind("::1", 8080)),
        ("[::]:0", Bind("::", 0)),
        ("unix:/tmp/app.sock", Bind(path="/tmp/app.sock")),
        ("unix:relative.sock", Bind(path="relative.sock")),
        ("unix:///tmp/app.sock", Bind(path="/tmp/app.sock")),  # gunicorn's spelling too
    ],
)
def test_bind(value, bind):
    assert config.parse(["app:app", "--bind", value]).bind == [bind]


def test_bind_repeats_and_keeps_its_order():
    settings = config.parse(["app:app", "-b", ":1", "--bind", "unix:/s", "-b", "[::1]:2"])
    assert [str(b) for b in settings.bind] == ["0.0.0.0:1", "unix:/s", "[::1]:2"]


def test_numbers_and_switches():
    settings = config.parse(
        "app:app -w 4 --max-requests 100 --graceful-timeout 2.5 --timeout 0 "
        "--idle-return 0.5 --access-log - --log-level WARNING --pid p.pid --handler "
        "--check".split()
    )
    assert (settings.workers, settings.max_requests) == (4, 100)
    assert (settings.graceful_timeout, settings.timeout, settings.idle_return) == (2.5, 0, 0.5)
    assert (settings.access_log, settings.log_level, settings.pid) == ("-", "warning", "p.pid")
    assert settings.handler and settings.check


def test_chdir_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "site").mkdir()
    assert config.parse(["app:app", "--chdir", "site"]).chdir == str(tmp_path / "site")


def test_routes_keep_their_order_and_share_a_pools_size():
    settings = config.parse(
        [
            "app:app",
            "--route",
            "127.0.0.2=special",
            "--route",
            "10.1.2.3/8=internal:3",  # strict=False: the host bits are dropped
            "--route",
            "192.168.0.0/16=internal",
            "--route",
            "::1/128=v6:2",
        ]
    )
    net = ipaddress.ip_network
    assert settings.route == [
        Route(net("127.0.0.2/32"), "special", 1),
        Route(net("10.0.0.0/8"), "internal", 3),
        Route(net("192.168.0.0/16"), "internal", 3),
        Route(net("::1/128"), "v6", 2),
    ]


# -- parsing: bad values ----------------------------------------------------------


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--bind", "8000"], ["'8000'", ":8000"]),
        (["--bind", "::1:80"], ["'::1:80'", "[ADDRESS]:PORT"]),
        (["--bind", "[nope]:80"], ["'[nope]:80'", "not an IPv6 address"]),
        (["--bind", "[::1"], ["'[::1'", "[ADDRESS]:PORT"]),
        (["--bind", "host:http"], ["'host:http'", "0 to 65535"]),
        (["--bind", "host:65536"], ["'host:65536'", "0 to 65535"]),
        (["--bind", "unix:"], ["'unix:'", "needs a path"]),
        (["--bind", ":"], ["':'", "HOST:PORT"]),
        (["--route", "10.0.0.0/33=slow"], ["'10.0.0.0/33'", "CIDR", "e.g."]),
        (["--route", "nonsense=slow"], ["'nonsense'", "CIDR"]),
        (["--route", "10.0.0.0/8"], ["'10.0.0.0/8'", "CIDR=NAME[:N]"]),
        (["--route", "10.0.0.0/8="], ["'10.0.0.0/8='", "NAME"]),
        (["--route", "10.0.0.0/8=a b"], ["'10.0.0.0/8=a b'", "NAME"]),
        (["--route", "10.0.0.0/8=default"], ["'default'", "name yours otherwise"]),
        (["--route", "10.0.0.0/8=x:0"], ["'10.0.0.0/8=x:0'", ">= 1"]),
        (["--route", "10.0.0.0/8=x:two"], ["'10.0.0.0/8=x:two'", ">= 1"]),
        (["--route", "10.0.0.0/8=x:2", "--route", "11.0.0.0/8=x:3"], ["'x'", "2 and 3"]),
        (["--workers", "0"], ["--workers", "'0'", ">= 1"]),
        (["--workers", "1.5"], ["--workers", "'1.5'"]),
        (["--max-requests", "-1"], ["--max-requests", "'-1'", ">= 0"]),
        (["--timeout", "soon"], ["--timeout", "'soon'", "seconds"]),
        (["--graceful-timeout", "nan"], ["--graceful-timeout", "'nan'"]),
        (["--idle-return", "inf"], ["--idle-return", "'inf'"]),
        (["--log-level", "loud"], ["'loud'", "debug, info, warning, error"]),
        (["--chdir", "/no/such/dir"], ["--chdir", "/no/such/dir"]),
        (["--config", "/no/such/file.py"], ["--config", "/no/such/file.py"]),
        (["--frobnicate"], ["--frobnicate"]),
    ],
)
def test_a_bad_value_is_one_line_naming_it(capsys, argv, names):
    line = usage_error(capsys, ["app:app", *argv])
    for name in names:
        assert name in line


def test_target_is_required(capsys):
    assert "TARGET" in usage_error(capsys, ["--workers", "2"])


# -- the config file ------------------------------------------------------------


CONFIG = """\
    import multiprocessing  # modules, _names and imports are the file's own helpers
    from os import environ, cpu_count
    from collections import OrderedDict
    _workers = 3
    bind = ["127.0.0.1:0", "unix:/tmp/serve.sock"]
    workers = _workers
    route = "127.0.0.2=special:2"
    max_requests = "10"
    graceful_timeout = 5
    timeout = 0
    idle_return = 1.5
    access_log = "-"
    log_level = "DEBUG"
    pid = "serve.pid"
    handler = True
    def _helper():
        pass
"""


def test_config_file_sets_every_long_option(tmp_path):
    path = write(tmp_path, "serve_conf.py", CONFIG)
    settings = config.parse(["app:app", "-c", path])
    assert settings == Settings(
        target="app:app",
        handler=True,
        bind=[Bind("127.0.0.1", 0), Bind(path="/tmp/serve.sock")],
        workers=3,
        route=[Route(ipaddress.ip_network("127.0.0.2/32"), "special", 2)],
        max_requests=10,
        graceful_timeout=5.0,
        timeout=0.0,
        idle_return=1.5,
        access_log="-",
        log_level="debug",
        pid="serve.pid",
        config=path,
    )


def test_command_line_wins_over_the_config_file(tmp_path):
    path = write(tmp_path, "serve_conf.py", CONFIG)
    settings = config.parse(
        ["app:app", "--config", path, "-w", "5", "-b", ":9000", "--log-level", "error"]
    )
    assert (settings.workers, settings.bind, settings.log_level) == (5, [Bind("", 9000)], "error")
    assert settings.max_requests == 10  # what the command line does not give stays the file's
    settings = config.parse(["app:app", "-c", path, "--route", "10.0.0.0/8=other"])
    assert [r.name for r in settings.route] == ["other"]  # a list replaced, not added to


@pytest.mark.parametrize(
    "source, names",
    [
        ("wrkers = 3", ["'wrkers'", "workers", "bind"]),
        ("def post_fork(server, worker):\n    pass", ["'post_fork'", "'_'"]),
        ("check = True", ["'check'"]),
        ("workers = 0", ["workers", "'0'", ">= 1"]),
        ("workers = True", ["workers = True", "number"]),
        ("bind = 8000", ["bind = 8000", "list of strings"]),
        ("route = ['10.0.0.0/33=x']", ["route", "'10.0.0.0/33'"]),
        ("handler = 'yes'", ["handler = 'yes'", "True or False"]),
        ("pid = 3", ["pid = 3", "string"]),
        ("x = 1\ny = x / 0", ["line 2", "ZeroDivisionError: division by zero"]),
        ("workers = (", ["line 1", "SyntaxError"]),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file_and_the_cause(
    capsys, tmp_path, source, names
):
    path = write(tmp_path, "bad_conf.py", source + "\n")
    line = usage_error(capsys, ["app:app", "-c", path])
    for name in [path, *names]:
        assert name in line


# -- TARGET: kind ------------------------------------------------------------------


def test_kind():
    import socketserver

    class Handler(socketserver.StreamRequestHandler):
        pass

    class App:  # PEP 3333 allows a class as the application
        def __init__(self, environ, start_response):
            pass

    assert target.kind(Handler, False) == "socketserver"
    assert target.kind(App, False) == "wsgi"
    assert target.kind(lambda environ, start_response: [], False) == "wsgi"
    assert target.kind(lambda socket, address: None, True) == "handler"
    for obj, handler in [(3, False), ("app", True), (socketserver.TCPServer, False)]:
        with pytest.raises(target.TargetError) as error:
            target.kind(obj, handler, "mod:name")
        assert "'mod:name'" in str(error.value) and "\n" not in str(error.value)


# -- through the command ------------------------------------------------------------


def test_help_lists_every_option_with_its_default(popen):
    code, out, err = serve(popen, "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: geventfork serve")
    flat = " ".join(out.split())
    for text in [
        "--bind ADDR",
        "[127.0.0.1:8000]",
        "--workers N",
        "[2]",
        "--route CIDR=NAME[:N]",
        "--max-requests N",
        "[0, never]",
        "--graceful-timeout S",
        "[30]",
        "--timeout S",
        "[30; 0 off]",
        "--idle-return S",
        "[2; 0 off]",
        "--access-log FILE",
        "--log-level LEVEL",
        "[info]",
        "--chdir DIR",
        "--pid FILE",
        "--config FILE",
        "--handler",
        "--check",
        "HUP",
        "TTIN",
    ]:
        assert text in flat


def test_help_and_usage_errors_need_no_gevent(popen):
    # Answered before the command patches: neither gevent nor a module it patches
    # is imported (signal: the runner's own SIGINT set-up, as for any script).
    source = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from geventfork._main import main\n"
        "for argv in (['serve', '--help'], ['serve', 'app:app', '--workers', '0']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        print('status', exc.code)\n"
        "patched = {'socket', 'ssl', 'select', 'selectors', 'threading', 'subprocess',\n"
        "           'queue', 'time', 'gevent', 'greenlet'}\n"
        "print(sorted(n for n in set(sys.modules) - before if n.split('.')[0] in patched))\n"
    )
    proc = gevent.subprocess.Popen(
        [sys.executable, "-c", source],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=python_env(),
    )
    popen.append(proc)
    out, err = proc.communicate(timeout=TIMEOUT)
    # Python 3.9's shutil (which argparse's help formatter imports) imports
    # bz2, which imports threading: imported, no thread started, and patched
    # in place by patch_all() later. 3.10+ import bz2 only when used.
    expected = "[]" if sys.version_info >= (3, 10) else "['threading']"
    assert out.decode().splitlines()[-3:] == ["status 0", "status 2", expected]
    assert err.decode().count("geventfork serve: error:") == 1


@pytest.mark.parametrize(
    "args, names",
    [
        (["app:app", "--frobnicate"], ["unrecognized arguments: --frobnicate"]),
        (["app:app", "--route", "10.0.0.0/33=slow"], ["--route", "'10.0.0.0/33'"]),
        (["app:app", "--bind", "localhost:http"], ["--bind", "'localhost:http'"]),
        ([], ["TARGET"]),
    ],
)
def test_usage_errors_exit_2_with_one_line(popen, args, names):
    code, out, err = serve(popen, *args)
    assert (code, out) == (2, "")
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert err.startswith("usage: geventfork serve") and last.startswith("geventfork serve: error:")
    for name in names:
        assert name in last


def test_geventfork_help_names_the_serve_command(popen):
    proc = gevent.subprocess.Popen(
        [sys.executable, "-m", "geventfork", "--help"],
        stdout=subprocess.PIPE,
        env=python_env(),
    )
    popen.append(proc)
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert "serve TARGET [OPTIONS]" in out.decode()


def test_a_script_named_serve_still_runs(popen, tmp_path):
    write(tmp_path, "serve", "import sys\nprint('the script named serve', sys.argv[1:])")
    proc = gevent.subprocess.Popen(
        [sys.executable, "-m", "geventfork", "./serve", "--check"],
        stdout=subprocess.PIPE,
        env=python_env(),
        cwd=str(tmp_path),
    )
    popen.append(proc)
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, out) == (0, b"the script named serve ['--check']\n")


# -- TARGET: --check -----------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kind",
    [
        (["wsgi_app.py:app"], "wsgi"),
        (["wsgi_app.py:create_app()"], "wsgi"),
        (["wsgi_app:app"], "wsgi"),  # a module, from the current directory
        (["wsgi_app"], "wsgi"),  # its 'application'
        (["socketserver_app.py:UpperHandler"], "socketserver"),
        (["handler_app:handle", "--handler"], "handler"),
    ],
)
def test_check_loads_each_kind_of_target(popen, args, kind):
    code, out, err = serve(popen, "--check", *args, cwd=EXAMPLES)
    assert (code, out, err) == (0, f"{args[0]}: {kind}\n", "")


def test_check_with_a_path_from_elsewhere_and_chdir(popen, tmp_path):
    path = os.path.join(EXAMPLES, "wsgi_app.py") + ":app"
    assert serve(popen, "--check", path, cwd=str(tmp_path))[0] == 0
    assert serve(popen, "--check", "wsgi_app:app", "--chdir", EXAMPLES, cwd=str(tmp_path))[0] == 0


def test_check_loads_a_flask_app(popen):
    pytest.importorskip("flask")
    code, out, err = serve(popen, "--check", "flask_app:app", cwd=EXAMPLES)
    assert (code, out, err) == (0, "flask_app:app: wsgi\n", "")


APP_MODULE = """\
    def create_app():
        raise RuntimeError("no database")

    def handle(socket, address):
        pass

    number = 3
"""


@pytest.mark.parametrize(
    "module, spec, names",
    [
        (None, "nosuchmodule:app", ["no module named 'nosuchmodule'"]),
        (None, "nosuchfile.py:app", ["'nosuchfile.py'", "no such file"]),
        (APP_MODULE, "appmod:ap", ["module 'appmod' has no attribute 'ap'"]),
        (APP_MODULE, "appmod", ["'application'", "'app'", "appmod:NAME"]),
        (
            APP_MODULE,
            "appmod:create_app()",
            ["'appmod:create_app()'", "RuntimeError: no database", "appmod.py:2"],
        ),
        (APP_MODULE, "appmod:number", ["'appmod:number'", "int", "WSGI application"]),
        (APP_MODULE, "appmod:handle(1)", ["'handle(1)'", "name()"]),
        (
            "import os\n\ndef _f():\n    raise ValueError('bad\\nvalue')\n\n_f()\n",
            "appmod:app",
            ["importing 'appmod'", "ValueError: bad value", "appmod.py:4"],
        ),
        (
            "import no_such_dependency\n",
            "appmod:app",
            ["importing 'appmod'", "No module named 'no_such_dependency'", "appmod.py:1"],
        ),
        ("def f(:\n", "appmod:app", ["importing 'appmod'", "SyntaxError", "appmod.py:1"]),
        ("import sys\nsys.exit(3)\n", "appmod.py:app", ["SystemExit: 3", "appmod.py:2"]),
    ],
)
def test_check_of_a_target_that_does_not_load_is_one_line_exit_1(
    popen, tmp_path, module, spec, names
):
    if module is not None:
        write(tmp_path, "appmod.py", module)
    code, out, err = serve(popen, "--check", spec, cwd=str(tmp_path))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("geventfork serve: error: ")
    for name in names:
        assert name in err


def test_check_of_a_handler_target_that_is_not_callable(popen, tmp_path):
    write(tmp_path, "appmod.py", APP_MODULE)
    code, out, err = serve(popen, "--check", "appmod:number", "--handler", cwd=str(tmp_path))
    assert (code, out) == (1, "")
    assert err.startswith("geventfork serve: error: --handler:") and err.count("\n") == 1


def test_a_file_named_like_a_loaded_module_does_not_replace_it(popen, tmp_path):
    # ./json.py:app must not stand in for the json module the process already has.
    write(tmp_path, "json.py", "def app(environ, start_response):\n    return []\n")
    code, out, err = serve(popen, "--check", "./json.py:app", cwd=str(tmp_path))
    assert (code, out, err) == (0, "./json.py:app: wsgi\n", "")


def test_a_dotted_attribute(popen, tmp_path):
    write(
        tmp_path,
        "appmod.py",
        "class holder:\n    def app(environ, start_response):\n        pass\n",
    )
    assert serve(popen, "--check", "appmod:holder.app", cwd=str(tmp_path))[:2] == (
        0,
        "appmod:holder.app: wsgi\n",
    )
    code, _, err = serve(popen, "--check", "appmod:holder.nope", cwd=str(tmp_path))
    assert (code, err) == (1, "geventfork serve: error: 'appmod:holder' has no attribute 'nope'\n")
