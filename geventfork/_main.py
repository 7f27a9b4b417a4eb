"""``python -m geventfork SCRIPT``: run a script the way ``node SCRIPT`` does.

This module imports nothing of gevent's until it has decided whether to patch:
whatever is imported before ``patch_all()`` keeps the unpatched blocking
modules. For the same reason no folder of the user's is on ``sys.path``
until gevent has imported the standard modules it patches: a ``subprocess.py``
next to the script (as in Node's own example) would otherwise stand in for
the standard ``subprocess`` inside gevent.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, List, NoReturn, Optional, Sequence, TextIO, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from types import CodeType

from ._environ import CHANNEL_FD_ENV, MONKEY_ENV

__all__ = ["main", "run", "run_script", "COMMANDS"]

#: The exit status of a usage error or a script that cannot be found
#: (``python`` uses 2 for both, as do argparse and gunicorn).
USAGE_ERROR = 2

#: Commands: the first argument names one, or else it is a SCRIPT. A script
#: whose name is a command's is given as ``./NAME``. New commands (``serve``)
#: are added here.
COMMANDS = {
    "run": "run SCRIPT [ARGS...]   the same as geventfork SCRIPT [ARGS...]",
    "serve": "serve TARGET [OPTIONS] the drop-in pre-fork server (geventfork serve --help)",
}

USAGE = """\
usage: geventfork [-h] [-V] SCRIPT [ARGS...]
       geventfork run SCRIPT [ARGS...]
       geventfork serve TARGET [OPTIONS]
       python -m geventfork ... (the same)
"""

HELP = """\
Run SCRIPT the way `node SCRIPT` runs a script: gevent's monkey.patch_all()
first, then SCRIPT as __main__ (with its folder first on sys.path), then the
event loop for as long as anything keeps it alive (a listening server, a
connected child, a live greenlet or timer). Exit status: the script's, 1 on
an uncaught exception, 2 when SCRIPT cannot be found.

SCRIPT is a file, a folder or zip file with a __main__.py, or a dotted module
name. A file named like a command is given as ./NAME.

commands:
{commands}

options:
  -h, --help      show this help and exit
  -V, --version   print the version and exit

fork(), process, net and Pool are described in the project's README.md, which
is also the installed package's description; to read it:
  python -c "import importlib.metadata as m; print(m.metadata('geventfork').get_payload())"
"""


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    """The command line: patch with gevent, run SCRIPT as ``__main__``, run the hub.

    Exits with the script's status, 1 on an uncaught exception, 2 on a usage
    error or a script that cannot be found (one line on stderr). Ctrl-C ends
    the process by SIGINT, quietly, as it ends ``node``, at any moment: until
    the script runs, SIGINT keeps its default action (Python's handler would
    raise ``KeyboardInterrupt`` wherever start-up happens to be).
    """
    user_folder = _take_user_folder()  # first: before anything else is imported
    handler = _quiet_sigint()
    script, args = _parse(list(sys.argv[1:] if argv is None else argv))
    if _is_file(script):
        script = _check_file(script)
    if os.environ.pop(MONKEY_ENV, "1") != "0":
        from gevent import monkey

        monkey.patch_all()
    from gevent import get_hub

    hub = get_hub()  # Ctrl-C: no "KeyboardInterrupt <time>" line from the hub
    hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)
    try:
        status = run_script(script, args, user_folder=user_folder, sigint=handler)
    except KeyboardInterrupt:
        _die_by_sigint()
    _quiet_sigint()  # interpreter teardown, too, ends quietly on Ctrl-C
    sys.exit(status)


# -- the command line -------------------------------------------------------


def _parse(args: List[str]) -> Tuple[str, List[str]]:
    """Split the command line into ``(SCRIPT, ARGS)``; exit on help, version or misuse."""
    while args and args[0].startswith("-") and args[0] != "-":
        option = args.pop(0)
        if option in ("-h", "--help"):
            _exit_with(_help(), 0, sys.stdout)
        if option in ("-V", "--version"):
            _exit_with(f"geventfork {_version()}\n", 0, sys.stdout)
        if option == "--":
            break
        _exit_with(f"{USAGE}geventfork: error: unknown option {option}\n", USAGE_ERROR)
    if args and args[0] == "serve":
        _serve(args[1:])
    if args and args[0] in COMMANDS:
        command = args.pop(0)
        if args and args[0] in ("-h", "--help"):
            _exit_with(_help(), 0, sys.stdout)
        if not args:
            _exit_with(f"{USAGE}geventfork {command}: error: SCRIPT is missing\n", USAGE_ERROR)
    if not args:
        _exit_with(USAGE, USAGE_ERROR)
    return args[0], args[1:]


def _serve(args: List[str]) -> NoReturn:
    """``geventfork serve ARGS``: usage errors first, unpatched; then patch and serve.

    The command line is checked before gevent is imported, so ``--help`` and
    a mistake are answered at once; the config file runs after ``patch_all()``
    (it is the user's code), inside ``geventfork.serve.main``.
    """
    from .serve import config

    config.parse_arguments(args)
    from gevent import monkey

    monkey.patch_all()  # the parent too: it serves with gevent, and runs the config file
    from .serve import main as serve

    serve(args)


def _help() -> str:
    commands = "\n".join(
        f"  {line}" for line in ["SCRIPT [ARGS...]       run SCRIPT", *COMMANDS.values()]
    )
    return USAGE + "\n" + HELP.format(commands=commands)


def _version() -> str:
    from . import __version__

    return __version__


def _exit_with(text: str, status: int, stream: Optional[TextIO] = None) -> NoReturn:
    (stream or sys.stderr).write(text)
    sys.exit(status)


def _is_file(script: str) -> bool:
    """Whether ``script`` names a file or folder (else a dotted module name)."""
    return script.endswith(".py") or os.sep in script or os.path.exists(script)


def _check_file(script: str) -> str:
    """Exit with one line, as ``python`` does, unless ``script`` can be run."""
    path = os.path.abspath(script)
    if not os.path.exists(path):
        _exit_with(
            f"geventfork: can't open file {path!r}: [Errno 2] No such file or directory\n",
            USAGE_ERROR,
        )
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "__main__.py")):
        _exit_with(f"geventfork: can't find '__main__' module in {path!r}\n", USAGE_ERROR)
    return script


# -- sys.path and signals ---------------------------------------------------


def _take_user_folder() -> Optional[str]:
    """Take the user's folder off ``sys.path``; return it (None if there was none).

    ``python -m`` puts the current directory first, a console script its
    own folder. The script's folder goes back on once gevent has patched.
    """
    if getattr(sys.flags, "safe_path", False) or not sys.path:  # -P / PYTHONSAFEPATH (3.11+)
        return None
    sys.path.pop(0)
    return os.getcwd()


def _quiet_sigint() -> Any:
    """Let SIGINT end the process by its default action; return the previous handler.

    A forked child starts with SIGINT blocked (see ``child_process``), so
    that Ctrl-C during its interpreter's start-up is held until now: it is
    unblocked here and, if one is pending, ends the process at once.
    """
    import signal

    handler = signal.getsignal(signal.SIGINT)
    if handler is signal.default_int_handler:  # an ignored SIGINT stays ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    if CHANNEL_FD_ENV in os.environ and hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    return handler


def _die_by_sigint() -> NoReturn:
    """Exit the way an unhandled SIGINT exits a process: killed by it."""
    import signal

    try:
        sys.stdout.flush()
    except OSError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    os._exit(128 + signal.SIGINT)  # SIGINT blocked or ignored: exit as a shell reports it


# -- running the script -----------------------------------------------------


def run_script(
    script: str,
    args: Sequence[str],
    *,
    user_folder: Optional[str] = None,
    sigint: Any = None,
) -> int:
    """Run ``script`` (a file, folder or dotted module name), then the hub.

    Args:
        script: what to run as ``__main__``.
        args: its arguments (``sys.argv[1:]``).
        user_folder: the folder a dotted module name is looked up from (the
            current directory, as for ``python -m``); None to leave
            ``sys.path`` as it is for a module.
        sigint: the SIGINT handler to install while the script runs (None:
            leave it alone).

    Returns:
        The exit status: the script's, 1 on an uncaught exception (its
        traceback, from the script's own frame, is printed), 2 when a module
        cannot be found.
    """
    import builtins  # noqa: F401  everything the runner uses, before the
    import io  # noqa: F401        script's folder goes on sys.path
    import runpy  # noqa: F401
    import signal
    import traceback  # noqa: F401
    import types  # noqa: F401
    import zipfile  # noqa: F401
    from importlib.util import find_spec  # noqa: F401

    from ._process import process

    process.connect_channel(script, list(args))
    is_file = _is_file(script)
    folder = os.path.dirname(os.path.abspath(script)) if is_file else user_folder
    if folder is not None:  # as ``python script.py`` and ``python -m module`` do
        sys.path.insert(0, folder)
    sys.argv = [script, *args]
    try:
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
        if is_file and os.path.isfile(script) and not _is_zip(script):
            _run_source_as_main(script)
        elif is_file:  # a folder or zip file with a __main__.py
            runpy.run_path(script, run_name="__main__")
        else:
            _run_module_as_main(script)
    except SystemExit as exc:
        return _status(exc.code)
    except KeyboardInterrupt:
        raise
    except _ModuleNotFound as exc:
        sys.stderr.write(f"geventfork: {exc}\n")
        return USAGE_ERROR
    except BaseException as exc:
        _print_script_error(exc)
        return 1
    try:
        run()
    except SystemExit as exc:
        return _status(exc.code)
    return 0


class _ModuleNotFound(Exception):
    """SCRIPT named a module that is not there: a usage error, not a traceback."""


def _run_source_as_main(path: str) -> None:
    """Run a source file as ``__main__``, the way ``python path`` does."""
    import io

    with io.open_code(path) as f:
        code = compile(f.read(), path, "exec", dont_inherit=True)
    _exec_as_main(code, __file__=path)


def _run_module_as_main(name: str) -> None:
    """Run a module (a package's ``__main__``) as ``__main__``, as ``python -m`` does."""
    from importlib.util import find_spec

    try:
        spec = find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            spec = find_spec(f"{name}.__main__")
    except ModuleNotFoundError as exc:  # a missing parent package
        raise _ModuleNotFound(f"No module named {exc.name!r}") from None
    if spec is None or spec.loader is None:
        raise _ModuleNotFound(f"No module named {name!r}")
    sys.argv[0] = spec.origin or name
    code = spec.loader.get_code(spec.name)  # type: ignore[attr-defined]
    _exec_as_main(
        code,
        __file__=spec.origin,
        __spec__=spec,
        __loader__=spec.loader,
        __package__=spec.parent,
        __cached__=spec.cached,
    )


def _exec_as_main(code: CodeType, **attributes: object) -> None:
    """Run ``code`` in a new ``__main__`` module that stays in ``sys.modules``.

    Not ``runpy``: it runs the code in a temporary module and puts the
    previous ``__main__`` back when the top level returns, but the hub runs
    the script's greenlets after that, and pickle (``serialization="pickle"``)
    looks the script's classes up in ``sys.modules["__main__"]``.
    """
    import builtins
    import types

    main = types.ModuleType("__main__")
    main.__dict__.update(attributes, __builtins__=builtins)
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def _print_script_error(exc: BaseException) -> None:
    """Print ``exc``'s traceback from the script's frame on, as ``python`` does."""
    import traceback

    tb = exc.__traceback__
    while tb is not None and _is_runner_frame(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def _is_runner_frame(filename: str) -> bool:
    import runpy

    return filename in (__file__, runpy.__file__) or filename.startswith(
        ("<frozen importlib", "<frozen runpy")
    )


def _is_zip(path: str) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def run() -> None:
    """Run the gevent hub until nothing keeps it alive, as Node's event loop does.

    A listening server, a referenced child or channel, a live greenlet or a
    pending timer keeps it running. Call it at the end of a script started
    with plain ``python``; ``python -m geventfork`` calls it for you.
    """
    from gevent import get_hub

    from ._process import process

    process.on_top_level_done()
    hub = get_hub()
    # One turn of the loop first: gevent (>= 25.8.1) defers an os.close() of a
    # pipe or socket to a check watcher of the loop, which keeps join() from
    # returning until the loop turns, and an idle loop never does.
    # gevent's watchers are context managers (closed on exit); its stubs omit it.
    with hub.loop.idle() as watcher:  # type: ignore[attr-defined]
        hub.wait(watcher)
    hub.join()


def _status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1
