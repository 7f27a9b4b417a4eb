"""The command line and the config file of ``geventfork serve``, made into ``Settings``.

Imports nothing of gevent's: ``--help`` and usage errors are answered before
the command patches (see ``geventfork._main``).

Every mistake in an option's value, on the command line or in the config
file, is a usage error: the usage line, then one line
``geventfork serve: error: ...`` naming the value and what to give instead,
exit status 2 (argparse's, as gunicorn's).
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .settings import DEFAULT_POOL, Bind, Network, Route, Settings

__all__ = ["parse", "parse_arguments", "build_parser", "CONFIG_NAMES", "LOG_LEVELS"]

PROG = "geventfork serve"
LOG_LEVELS = ("debug", "info", "warning", "error")
#: The settings a config file may set: the long options, '-' as '_'.
CONFIG_NAMES = (
    "bind",
    "workers",
    "route",
    "max_requests",
    "graceful_timeout",
    "timeout",
    "idle_return",
    "keep_alive",
    "access_log",
    "log_level",
    "chdir",
    "pid",
    "handler",
    "proxy_protocol",
    "proxy_allow",
    "proxy_timeout",
)
#: A pool's name appears in log lines (``pool=NAME``): no spaces or '='.
_POOL_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
#: The config file runs as a module of this name.
_CONFIG_MODULE = "__config__"
#: gunicorn's port when ``--bind`` gives a host alone.
_DEFAULT_PORT = 8000

DESCRIPTION = """\
Serve TARGET with pre-forked gevent workers: the parent accepts every
connection and hands it to a worker of the pool the client's address picks.

TARGET is module:name, path/to/file.py:name, module:factory() (called with
no arguments) or module alone (its 'application', else its 'app'). It is a
WSGI application, a socketserver.BaseRequestHandler subclass, or, with
--handler, a handle(socket, address) callable.
"""

EPILOG = """\
signals to the parent: TERM, INT graceful stop; QUIT quick stop; HUP reload
(new workers import TARGET afresh); TTIN, TTOU one worker more, fewer.
exit status: 0 after a stop, 1 when TARGET does not load or a bind fails,
2 for usage errors.
"""


# -- option values ------------------------------------------------------------


def parse_bind(value: str) -> Bind:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT``, ``HOST`` (port 8000) or ``unix:PATH``.

    Raises:
        argparse.ArgumentTypeError: ``value`` is none of these.
    """
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        path = path[2:] if path.startswith("//") else path  # gunicorn's unix://PATH
        if not path:
            raise _bad(value, "unix: needs a path, e.g. unix:/tmp/app.sock")
        return Bind(path=path)
    host, port = _split_host_port(value)
    return Bind(host.lower(), _port(value, port))


def _split_host_port(value: str) -> Tuple[str, str]:
    """Split a TCP ``--bind`` value; the port is "" when it names a host alone."""
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _bad(value, "give an IPv6 address as [ADDRESS]:PORT, e.g. [::1]:8000")
        _ipv6(value, host)
        return host, rest[1:]
    if value.count(":") > 1:
        raise _bad(value, "put an IPv6 address in brackets: [ADDRESS]:PORT, e.g. [::1]:8000")
    host, _, port = value.partition(":")
    if host.isdigit() and not port:
        raise _bad(value, f"give HOST:PORT, or :{host} for port {host} on all interfaces")
    if not host and not port:
        raise _bad(value, "give HOST:PORT, :PORT, [V6]:PORT or unix:PATH")
    return host, port


def _ipv6(value: str, host: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise _bad(value, f"{host!r} is not an IPv6 address") from None


def _port(value: str, port: str) -> int:
    if not port:
        return _DEFAULT_PORT
    if not port.isdigit() or int(port) > 65535:
        raise _bad(value, f"the port {port!r} is not a number from 0 to 65535")
    return int(port)


def parse_route(value: str) -> Tuple[Route, bool]:
    """``CIDR=NAME[:N]``; returns the route and whether N was given.

    Raises:
        argparse.ArgumentTypeError: a bad CIDR, an empty or reserved NAME, N < 1.
    """
    example = "e.g. 10.0.0.0/8=internal:2"
    cidr, equals, pool = value.partition("=")
    if not equals:
        raise _bad(value, f"give CIDR=NAME[:N], {example}")
    try:
        network = ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError:
        raise _bad(value, f"{cidr!r} is not an address or network (CIDR), {example}") from None
    name, colon, count = pool.partition(":")
    if not _POOL_NAME.match(name):
        raise _bad(value, f"give the pool a NAME of letters, digits, '_', '.', '-', {example}")
    if name == DEFAULT_POOL:
        raise _bad(value, f"'{DEFAULT_POOL}' is the pool of unrouted clients: name yours otherwise")
    if colon and (not count.isdigit() or int(count) < 1):
        raise _bad(value, f"N, the pool's workers, is a whole number >= 1, {example}")
    return Route(network, name, int(count) if colon else 1), bool(colon)


def parse_proxy_allow(value: str) -> List[Network]:
    """``CIDR[,CIDR...]``: the networks whose PROXY protocol headers are believed.

    Raises:
        argparse.ArgumentTypeError: an item that is not an address or network.
    """
    networks = []
    for item in value.split(","):
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            what = "not" if item == value else f"{item.strip()!r} is not"
            raise _bad(value, f"{what} an address or network (CIDR), e.g. 10.0.0.0/8,::1") from None
    return networks


def _number(kind: Callable[[str], Any], least: float, what: str) -> Callable[[str], Any]:
    """A converter for a number of type ``kind`` that is at least ``least``; ``what`` to give."""

    def convert(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or not math.isfinite(number) or number < least:
            raise _bad(value, f"give {what}")
        return number

    return convert


def _log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise _bad(value, f"give one of {', '.join(LOG_LEVELS)}")
    return value.lower()


def _bad(value: str, what_to_do: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"{value!r}: {what_to_do}")


#: Each option's converter, by its setting's name (those not here are strings).
CONVERTERS: Dict[str, Callable[[str], Any]] = {
    "bind": parse_bind,
    "route": parse_route,
    "workers": _number(int, 1, "a whole number >= 1"),
    "max_requests": _number(int, 0, "a whole number >= 0 (0: never)"),
    "graceful_timeout": _number(float, 0, "seconds >= 0"),
    "timeout": _number(float, 0, "seconds >= 0 (0: off)"),
    "idle_return": _number(float, 0, "seconds >= 0 (0: off)"),
    "keep_alive": _number(float, 0.001, "seconds > 0"),
    "proxy_allow": parse_proxy_allow,
    "proxy_timeout": _number(float, 0.001, "seconds > 0"),
    "log_level": _log_level,
}


# -- the parser -----------------------------------------------------------------


#: The options: flags, metavar (None: a switch), help; ``{name}`` is a default.
OPTIONS: List[Tuple[Tuple[str, ...], Optional[str], str]] = [
    (("-b", "--bind"), "ADDR",
     "HOST:PORT, [V6]:PORT, :PORT (all interfaces) or unix:PATH; repeatable [{bind}]"),
    (("-w", "--workers"), "N", "workers in the default pool [{workers}]"),
    (("--route",), "CIDR=NAME[:N]",
     "clients whose address is in CIDR go to pool NAME of N workers [1]; repeatable, "
     "first match wins; the rest go to the default pool [none]"),
    (("--handler",), None, "TARGET is a plain handle(socket, address) callable [off]"),
    (("--max-requests",), "N",
     "replace a worker after it served N connections (WSGI: requests) [{max_requests}, never]"),
    (("--graceful-timeout",), "S",
     "on stop or reload, seconds a worker gets to finish [{graceful_timeout}]"),
    (("--timeout",), "S",
     "kill and replace a worker whose event loop has not answered a heartbeat for S "
     "seconds [{timeout}; 0 off]"),
    (("--idle-return",), "S",
     "hand a keep-alive connection idle in a worker for S seconds back to the parent "
     "until its next request [{idle_return}; 0 off]"),
    (("--keep-alive",), "S",
     "close a keep-alive connection the parent has held idle for S seconds "
     "[{keep_alive}]"),
    (("--access-log",), "FILE",
     "one line per request (WSGI) or connection; '-' is stderr [off]"),
    (("--log-level",), "LEVEL", ", ".join(LOG_LEVELS) + " [{log_level}]"),
    (("--chdir",), "DIR", "change to DIR before loading TARGET [no change]"),
    (("--pid",), "FILE", "write the parent's pid to FILE [none]"),
    (("-c", "--config"), "FILE",
     "a Python file setting the long options ('-' as '_'): bind = [...], workers = 4, "
     "route = [...]; the command line wins [none]"),
    (("--check",), None, "load TARGET, then exit: 0 if it loads, else 1 with the error [off]"),
    (("--proxy-protocol",), None,
     "behind a load balancer: every connection starts with a PROXY protocol header (v1 or "
     "v2, HAProxy's send-proxy, send-proxy-v2) naming the client, whose address then picks "
     "the pool and goes in the access log [off]"),
    (("--proxy-allow",), "CIDR[,CIDR...]",
     "believe PROXY headers from these networks only; a connection from elsewhere is "
     "closed; repeatable [{proxy_allow}]"),
    (("--proxy-timeout",), "S",
     "seconds a connection has to send its whole PROXY header [{proxy_timeout}]"),
]  # fmt: skip
#: Options given more than once add up (the others: the last one counts).
REPEATABLE = ("bind", "route", "proxy_allow")
#: Options that mean something only with ``--proxy-protocol``.
_PROXY_OPTIONS = ("proxy_allow", "proxy_timeout")


def build_parser() -> argparse.ArgumentParser:
    """The ``geventfork serve`` argument parser; each option's help shows its default.

    Options default to ``argparse.SUPPRESS``: a name in the result was given on
    the command line, so it wins over the config file.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("target", metavar="TARGET", help="what to serve (see above)")
    defaults = _defaults()
    for flags, metavar, text in OPTIONS:
        name = flags[-1][2:].replace("-", "_")
        if metavar is None:
            parser.add_argument(*flags, action="store_true", help=text)
            continue
        parser.add_argument(
            *flags,
            metavar=metavar,
            type=CONVERTERS.get(name, str),
            action="append" if name in REPEATABLE else "store",
            help=text.format(**defaults),
        )
    return parser


def _defaults() -> Dict[str, str]:
    """Each setting's default, as ``--help`` shows it."""
    d = Settings()
    shown = {name: f"{value:g}" if isinstance(value, float) else str(value)
             for name, value in vars(d).items()}  # fmt: skip
    shown["bind"] = ", ".join(map(str, d.bind))
    shown["proxy_allow"] = ", ".join(map(str, d.proxy_allow))
    return shown


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line alone (not the config file).

    Exits on ``--help`` (status 0) and on a usage error (status 2, one line).
    """
    return build_parser().parse_args(list(argv))


def parse(argv: Sequence[str]) -> Settings:
    """``geventfork serve``'s arguments, and the config file they name, as ``Settings``.

    Args:
        argv: the arguments after ``serve``.

    Returns:
        The settings: the command line's values, else the config file's, else
        the defaults. Routes naming the same pool share its worker count.

    Raises:
        SystemExit: ``--help`` (0), or a usage error (2) after the usage line
            and one line naming the mistake, on stderr.
    """
    parser = build_parser()
    given = vars(parser.parse_args(list(argv)))
    values: Dict[str, Any] = {}
    if "config" in given:
        values.update(_load_config(parser, given["config"]))
    values.update(given)
    _check_proxy_options(parser, values)
    routes = values.pop("route", [])
    settings = Settings(**values)
    settings.route = _pool_sizes(parser, routes)
    if settings.chdir is not None:
        settings.chdir = _directory(parser, settings.chdir)
    return settings


def _check_proxy_options(parser: argparse.ArgumentParser, values: Dict[str, Any]) -> None:
    """Flatten ``proxy_allow`` (each value is a list); refuse the PROXY
    options without ``--proxy-protocol``, where they would do nothing."""
    if "proxy_allow" in values:
        values["proxy_allow"] = [net for nets in values["proxy_allow"] for net in nets]
    given = [name for name in _PROXY_OPTIONS if name in values]
    if given and not values.get("proxy_protocol"):
        flags = " and ".join("--" + name.replace("_", "-") for name in given)
        needs = "needs" if len(given) == 1 else "need"
        parser.error(f"{flags} {needs} --proxy-protocol: add it, or leave {flags} out")


def _pool_sizes(parser: argparse.ArgumentParser, routes: List[Tuple[Route, bool]]) -> List[Route]:
    """Give every route of a pool the N one of them names (1 if none does)."""
    sizes: Dict[str, int] = {}
    for route, explicit in routes:
        if explicit and sizes.setdefault(route.name, route.workers) != route.workers:
            parser.error(
                f"argument --route: pool {route.name!r} is given {sizes[route.name]} and "
                f"{route.workers} workers: give N once, or the same N"
            )
    return [Route(r.network, r.name, sizes.get(r.name, 1)) for r, _ in routes]


def _directory(parser: argparse.ArgumentParser, path: str) -> str:
    if not os.path.isdir(path):
        parser.error(f"argument --chdir: {path!r}: no such directory")
    return os.path.abspath(path)


# -- the config file ------------------------------------------------------------


def _load_config(parser: argparse.ArgumentParser, path: str) -> Dict[str, Any]:
    """Run the config file; return its settings, converted as the command line's are."""
    names = _run_config(parser, path)
    values: Dict[str, Any] = {}
    for name, value in names.items():
        if _is_helper(name, value):
            continue
        if name not in CONFIG_NAMES:
            parser.error(
                f"{path}: unknown setting {name!r}; settings are the long options "
                f"with '-' as '_': {', '.join(CONFIG_NAMES)} (helpers: start with '_')"
            )
        values[name] = _config_value(parser, path, name, value)
    return values


def _is_helper(name: str, value: Any) -> bool:
    """Whether a config file's name is its own business, not a setting.

    ``_private`` names, modules and what it imported (``from os import
    cpu_count, environ``) are; a function it defines is not (gunicorn's hooks, such as
    ``post_fork``, are not settings here: better said than ignored).
    """
    if name.startswith("_") or isinstance(value, types.ModuleType):
        return True
    # Functions, classes and their instances know their module; numbers, strings
    # and lists do not, and are settings.
    return getattr(value, "__module__", _CONFIG_MODULE) != _CONFIG_MODULE


def _run_config(parser: argparse.ArgumentParser, path: str) -> Dict[str, Any]:
    """The top-level names of the config file at ``path``; one line if it fails to run."""
    import runpy

    if not os.path.isfile(path):
        parser.error(f"argument -c/--config: {path!r}: no such file")
    try:
        return runpy.run_path(path, run_name=_CONFIG_MODULE)
    except Exception as exc:  # the user's file: one line naming where and why
        parser.error(f"{path}: {_where(exc, path)}{type(exc).__name__}: {_one_line(exc)}")


def _where(exc: BaseException, path: str) -> str:
    """``LINE: `` of the config file's innermost frame in ``exc``'s traceback, or ""."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"line {exc.lineno}: "
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"line {line}: " if line else ""


def _one_line(exc: BaseException) -> str:
    text = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    return " ".join(str(text).split())


def _config_value(parser: argparse.ArgumentParser, path: str, name: str, value: Any) -> Any:
    """Check and convert one config-file setting; a usage error naming it if bad."""
    if name in ("handler", "proxy_protocol"):
        if not isinstance(value, bool):
            parser.error(f"{path}: {name} = {value!r}: give True or False")
        return value
    if name in REPEATABLE:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            parser.error(f"{path}: {name} = {value!r}: give a string or a list of strings")
        return [_convert(parser, path, name, item) for item in items]
    if name in CONVERTERS:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            parser.error(f"{path}: {name} = {value!r}: give a number")
        return _convert(parser, path, name, str(value))
    if value is not None and not isinstance(value, str):
        parser.error(f"{path}: {name} = {value!r}: give a string (or None)")
    return value


def _convert(parser: argparse.ArgumentParser, path: str, name: str, value: str) -> Any:
    try:
        return CONVERTERS.get(name, str)(value)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"{path}: {name}: {exc}")
