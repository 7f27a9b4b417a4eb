"""TARGET: find what ``geventfork serve`` serves, and tell which kind it is.

``load("module:name")``, ``load("path/to/file.py:name")``,
``load("module:factory()")``, ``load("module")`` (its ``application``, else its
``app``, as gunicorn looks for ``application``). ``kind(obj, handler)`` says how
a worker serves it. Every failure is a ``TargetError`` of one line that names
the cause: a user's mistake gets no traceback.

Workers call this after ``monkey.patch_all()``; nothing here imports a module
gevent patches (``socketserver`` is looked up in ``sys.modules``: a handler
class can only subclass it once it is imported).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import sysconfig
import types
from typing import List, Optional, Tuple

__all__ = ["TargetError", "load", "kind", "check", "DEFAULT_NAMES"]

#: What ``module`` alone names: gunicorn's default first, then Flask's habit.
DEFAULT_NAMES = ("application", "app")
_HERE = os.path.abspath(__file__)


class TargetError(Exception):
    """TARGET does not load or cannot be served: the user's mistake; ``str()`` is one line."""


def check(spec: str, handler: bool = False) -> str:
    """Load TARGET and return its kind (``--check``).

    Raises:
        TargetError: it does not load, or is not something ``serve`` can serve.
    """
    return kind(load(spec), handler, spec)


def load(spec: str) -> object:
    """Import TARGET's module and return the object it names.

    The current directory goes first on ``sys.path`` (as gunicorn does); a
    file path's own folder goes before it.

    Args:
        spec: ``module:name``, ``path/to/file.py:name``, ``module:factory()``
            or ``module``; ``name`` may be dotted (``module:obj.attr``).

    Returns:
        The object (a factory's return value for ``factory()``).

    Raises:
        TargetError: one line naming the cause.
    """
    where, colon, name = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if not where or (colon and not name):
        raise TargetError(f"TARGET {spec!r}: give module:name, path/to/file.py:name or module")
    module = _import(where)
    if not colon:
        return _default_attribute(module, where)
    call = name.endswith("()")
    path = name[:-2] if call else name
    if not all(part.isidentifier() for part in path.split(".")):
        raise TargetError(
            f"TARGET {spec!r}: {name!r} is not a name or a call without arguments, name()"
        )
    obj = _attribute(module, where, path)
    return _call_factory(obj, spec) if call else obj


def kind(obj: object, handler: bool, spec: str = "") -> str:
    """How a worker serves ``obj``: ``"handler"``, ``"socketserver"`` or ``"wsgi"``.

    Args:
        obj: what ``load`` returned.
        handler: ``--handler`` was given: ``obj`` is ``handle(socket, address)``.
        spec: TARGET as given, for the error's line.

    Raises:
        TargetError: ``obj`` is none of them (not callable, or a server class).
    """
    name = f"TARGET {spec!r} ({_describe(obj)})" if spec else _describe(obj)
    if handler:
        if not callable(obj):
            raise TargetError(f"--handler: {name} is not callable: give handle(socket, address)")
        return "handler"
    socketserver = sys.modules.get("socketserver")
    if socketserver is not None and isinstance(obj, type):
        if issubclass(obj, socketserver.BaseRequestHandler):
            return "socketserver"
        if issubclass(obj, socketserver.BaseServer):
            raise TargetError(
                f"{name} is a socketserver server: give its request handler class instead"
            )
    if not callable(obj):
        raise TargetError(
            f"{name} is not a WSGI application (a callable), a "
            "socketserver.BaseRequestHandler subclass or, with --handler, "
            "a handle(socket, address) callable"
        )
    return "wsgi"


def _describe(obj: object) -> str:
    """``class mod.Name``, ``function mod.name`` or ``of type TYPE``."""
    name = getattr(obj, "__qualname__", None)
    if not isinstance(name, str):
        return f"of type {type(obj).__name__}"
    what = "class" if isinstance(obj, type) else type(obj).__name__
    return f"{what} {getattr(obj, '__module__', '?')}.{name}"


# -- importing ------------------------------------------------------------------


def _import(where: str) -> types.ModuleType:
    """Import a module by dotted name or by file path (``*.py`` or with a '/')."""
    cwd = os.getcwd()
    if not sys.path or sys.path[0] != cwd:  # first, as gunicorn: the app, not a namesake
        sys.path.insert(0, cwd)
    if where.endswith(".py") or os.sep in where:
        return _import_file(where)
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (where + ".").startswith(exc.name + "."):
            raise TargetError(
                f"cannot import {where!r}: no module named {exc.name!r} "
                f"(looked in {cwd} and sys.path)"
            ) from None
        raise TargetError(_raised(f"importing {where!r}", exc)) from None
    except (Exception, SystemExit) as exc:
        raise TargetError(_raised(f"importing {where!r}", exc)) from None


def _import_file(path: str) -> types.ModuleType:
    """Import the file at ``path`` as a module named for it, its folder first on ``sys.path``."""
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise TargetError(f"cannot import {path!r}: no such file")
    folder = os.path.dirname(full)
    sys.path.insert(0, folder)
    name = os.path.splitext(os.path.basename(full))[0]
    if name in sys.modules or not name.isidentifier():  # never stand in for another module
        name = "_geventfork_target"
    spec = importlib.util.spec_from_file_location(name, full)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot import {path!r}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import does: the module may look itself up
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise TargetError(_raised(f"importing {path!r}", exc)) from None
    return module


def _default_attribute(module: types.ModuleType, where: str) -> object:
    for name in DEFAULT_NAMES:
        if hasattr(module, name):
            return getattr(module, name)
    raise TargetError(
        f"module {where!r} has neither {DEFAULT_NAMES[0]!r} nor {DEFAULT_NAMES[1]!r}: "
        f"give TARGET as {where}:NAME"
    )


def _attribute(module: types.ModuleType, where: str, path: str) -> object:
    obj: object = module
    done = ""
    for part in path.split("."):
        if not hasattr(obj, part):
            owner = f"module {where!r}" if obj is module else repr(f"{where}:{done}")
            raise TargetError(f"{owner} has no attribute {part!r}")
        obj = getattr(obj, part)
        done = f"{done}.{part}" if done else part
    return obj


def _call_factory(factory: object, spec: str) -> object:
    if not callable(factory):
        raise TargetError(
            f"TARGET {spec!r}: {spec.rpartition(':')[2][:-2]!r} "
            f"({_describe(factory)}) is not callable"
        )
    try:
        return factory()
    except (Exception, SystemExit) as exc:
        raise TargetError(_raised(f"the factory {spec!r}", exc)) from None


# -- one line for an exception ---------------------------------------------------------


def _raised(what: str, exc: BaseException) -> str:
    """``WHAT raised TYPE: MESSAGE (FILE:LINE)``, FILE:LINE in the user's code."""
    message = _one_line(exc.msg if isinstance(exc, SyntaxError) else str(exc))
    location = _location(exc)
    text = f"{what} raised {type(exc).__name__}"
    text += f": {message}" if message else ""
    return text + (f" ({location})" if location else "")


def _location(exc: BaseException) -> Optional[str]:
    """``FILE:LINE`` of the innermost frame of the user's code, else of any file."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{_shown(exc.filename)}:{exc.lineno}"
    frames = _frames(exc)
    users = [frame for frame in frames if not _is_library(frame[0])]
    if not frames:
        return None
    filename, line = (users or frames)[-1]
    return f"{_shown(filename)}:{line}"


def _frames(exc: BaseException) -> List[Tuple[str, int]]:
    """The traceback's (file, line) pairs, outermost first, real files only."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.startswith("<") and os.path.abspath(filename) != _HERE:
            frames.append((filename, tb.tb_lineno))
        tb = tb.tb_next
    return frames


def _is_library(filename: str) -> bool:
    """Whether ``filename`` is in the standard library or an installed package."""
    paths = sysconfig.get_paths()
    roots = {os.path.abspath(paths[key]) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    full = os.path.abspath(filename)
    return any(full.startswith(root + os.sep) for root in roots)


def _shown(filename: str) -> str:
    """``filename`` relative to the current directory when it is under it."""
    relative = os.path.relpath(filename)
    return filename if relative.startswith("..") else relative


def _one_line(text: str) -> str:
    return " ".join(text.split())
