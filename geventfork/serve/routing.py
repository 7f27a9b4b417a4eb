"""Which pool serves a client: the first ``--route`` whose network holds its address."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from .._lifetime import parse_ip
from .settings import DEFAULT_POOL, Route

__all__ = ["Router", "pool_sizes"]


class Router:
    """Picks a pool name for a client address, as ``--route`` says.

    Args:
        routes: the ``--route`` options, in the order given (first match wins).
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes: List[Tuple[int, Route]] = [(r.network.version, r) for r in routes]

    def __bool__(self) -> bool:
        """Whether any route was given (else every client goes to the default pool)."""
        return bool(self._routes)

    def pool_for(self, address: Optional[str]) -> str:
        """The pool for a client at ``address`` (an IP address as the kernel
        gives it; None for a Unix socket's client, which goes to the default pool).

        Returns:
            The name of the first route whose network holds ``address``, else
            ``DEFAULT_POOL``.
        """
        if not self._routes or not address:
            return DEFAULT_POOL
        ip = parse_ip(address)
        if ip is None:
            return DEFAULT_POOL
        for version, route in self._routes:
            if version == ip.version and ip in route.network:
                return route.name
        return DEFAULT_POOL


def pool_sizes(default_workers: int, routes: Sequence[Route]) -> List[Tuple[str, int]]:
    """Each pool's name and size, the default pool first, then the routes' in
    the order they are first named (a name given twice keeps its first size).

    Args:
        default_workers: ``--workers``.
        routes: the ``--route`` options.
    """
    sizes = {DEFAULT_POOL: default_workers}
    for route in routes:
        sizes.setdefault(route.name, route.workers)
    return list(sizes.items())
