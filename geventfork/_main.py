"""``python -m geventfork SCRIPT``: run a script the way ``node SCRIPT`` does.

This module imports nothing of gevent's until it has decided whether to patch:
whatever is imported before ``patch_all()`` keeps the unpatched blocking
modules.
"""
from __future__ import annotations

import os
import sys

__all__ = ["main", "run", "run_script"]

#: The parent names the channel's fd in this variable (Node: ``NODE_CHANNEL_FD``).
CHANNEL_FD_ENV = "GEVENTFORK_CHANNEL_FD"
#: ``json`` or ``pickle`` (Node: ``NODE_CHANNEL_SERIALIZATION_MODE``).
SERIALIZATION_ENV = "GEVENTFORK_SERIALIZATION"
#: ``0`` when the child must not be monkey-patched.
MONKEY_ENV = "GEVENTFORK_MONKEY"
#: The largest message the child's channel accepts, in bytes.
MAX_MESSAGE_SIZE_ENV = "GEVENTFORK_MAX_MESSAGE_SIZE"

USAGE = "usage: python -m geventfork SCRIPT [ARGS...]\n"


def main(argv: list | None = None) -> None:
    """Patch with gevent, run SCRIPT as ``__main__``, then run the hub.

    Exits with the script's status, or 1 on an uncaught exception. Ctrl-C
    ends the process by SIGINT, quietly, as it ends ``node``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stderr.write(USAGE)
        sys.exit(0 if args else 2)
    if os.environ.pop(MONKEY_ENV, "1") != "0":
        from gevent import monkey

        monkey.patch_all()
    from gevent import get_hub

    hub = get_hub()  # Ctrl-C: no "KeyboardInterrupt <time>" line from the hub
    hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)
    try:
        status = run_script(args[0], args[1:])
    except KeyboardInterrupt:
        _die_by_sigint()
    sys.exit(status)


def run_script(script: str, args: list) -> int:
    """Run ``script`` (a file or a dotted module name), then the hub; return a status."""
    import runpy
    import traceback

    from ._process import process

    process._connect(script, args)
    is_file = os.path.exists(script) or script.endswith(".py")
    if is_file:
        sys.path[0] = os.path.dirname(os.path.abspath(script))
    sys.argv = [script, *args]
    try:
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
    except BaseException:
        traceback.print_exc()
        return 1
    try:
        run()
    except SystemExit as exc:
        return _status(exc.code)
    return 0


def _run_source_as_main(path: str) -> None:
    """Run a source file as ``__main__``, the way ``python path`` does."""
    import io

    with io.open_code(path) as f:
        code = compile(f.read(), path, "exec", dont_inherit=True)
    _exec_as_main(code, __file__=path)


def _run_module_as_main(name: str) -> None:
    """Run a module (a package's ``__main__``) as ``__main__``, as ``python -m`` does."""
    from importlib.util import find_spec

    spec = find_spec(name)
    if spec is not None and spec.submodule_search_locations is not None:
        spec = find_spec(f"{name}.__main__")
    if spec is None or spec.loader is None:
        raise ImportError(f"No runnable module named {name!r}")
    sys.argv[0] = spec.origin or name
    code = spec.loader.get_code(spec.name)  # type: ignore[attr-defined]
    _exec_as_main(
        code, __file__=spec.origin, __spec__=spec, __loader__=spec.loader,
        __package__=spec.parent, __cached__=spec.cached,
    )


def _exec_as_main(code: object, **attributes: object) -> None:
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

    process._top_level_done()
    get_hub().join()


def _die_by_sigint() -> None:
    """Exit the way an unhandled SIGINT exits a process: killed by it."""
    import signal

    sys.stdout.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


def _status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1
