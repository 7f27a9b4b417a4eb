"""What ``geventfork serve`` was asked to do: the settings, and what workers get of them.

The command line and the config file (``config.py``) fill a ``Settings``; the
parent (``arbiter.py``) runs it; each worker gets a ``WorkerSettings``, as
JSON, in its arguments.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple, Union

__all__ = [
    "Bind",
    "Route",
    "Settings",
    "WorkerSettings",
    "DEFAULT_POOL",
    "PROXY_ALLOW",
    "PROXY_TIMEOUT",
]

#: The pool that takes every client no ``--route`` matches.
DEFAULT_POOL = "default"
#: Whose PROXY protocol headers ``--proxy-protocol`` believes by default: this
#: machine's (``net.create_server``'s default too).
PROXY_ALLOW: Tuple[str, ...] = ("127.0.0.0/8", "::1/128")
#: Seconds a connection has to send its whole PROXY header by default.
PROXY_TIMEOUT = 5.0

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclass(frozen=True)
class Bind:
    """One ``--bind``: a TCP host and port, or a Unix socket's path."""

    host: Optional[str] = None  # "" for all interfaces; None for a Unix socket
    port: int = 0
    path: Optional[str] = None  # a Unix socket's path

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = self.host or "0.0.0.0"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass(frozen=True)
class Route:
    """One ``--route CIDR=NAME[:N]``: clients in ``network`` go to pool ``name``."""

    network: Network
    name: str
    workers: int = 1


@dataclass
class Settings:
    """Every option of ``geventfork serve`` and its default (README: serving an app)."""

    target: str = ""
    handler: bool = False  # --handler: a plain handle(socket, address) callable
    bind: List[Bind] = field(default_factory=lambda: [Bind("127.0.0.1", 8000)])
    workers: int = 2
    route: List[Route] = field(default_factory=list)
    max_requests: int = 0
    graceful_timeout: float = 30.0
    timeout: float = 30.0
    idle_return: float = 2.0
    keep_alive: float = 75.0
    access_log: Optional[str] = None
    log_level: str = "info"
    chdir: Optional[str] = None
    pid: Optional[str] = None
    config: Optional[str] = None
    check: bool = False
    # Behind a load balancer: connections start with a PROXY protocol header.
    proxy_protocol: bool = False
    proxy_allow: List[Network] = field(
        default_factory=lambda: [ipaddress.ip_network(n) for n in PROXY_ALLOW]
    )
    proxy_timeout: float = PROXY_TIMEOUT


@dataclass
class WorkerSettings:
    """What one worker needs to serve: passed as JSON in its arguments."""

    target: str
    handler: bool
    pool: str
    max_requests: int = 0
    idle_return: float = 2.0
    graceful_timeout: float = 30.0
    access_log: Optional[str] = None
    log_level: str = "info"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSettings:
        return cls(**json.loads(text))
