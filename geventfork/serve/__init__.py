"""``geventfork serve``: the drop-in pre-fork server for existing apps (see README).

``geventfork._main`` imports this package before it patches with gevent (to
answer ``--help`` and usage errors without it): it imports nothing at the top.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn, Sequence

__all__ = ["main"]


def main(argv: Sequence[str]) -> NoReturn:
    """Run ``geventfork serve ARGV``: parse, check TARGET, serve; exit with the status.

    Called patched (``monkey.patch_all()`` first). Exit status: 0 after a
    stop or a good ``--check``; 1 when TARGET does not load or a bind fails;
    2 for usage errors.
    """
    from . import config, target

    settings = config.parse(argv)
    if settings.chdir is not None:
        try:
            os.chdir(settings.chdir)
        except OSError as exc:
            sys.stderr.write(f"{config.PROG}: error: cannot change to {settings.chdir}: {exc}\n")
            sys.exit(1)
    try:
        what = target.check(settings.target, settings.handler)
    except target.TargetError as exc:
        sys.stderr.write(f"{config.PROG}: error: {exc}\n")
        sys.exit(1)
    if settings.check:
        sys.stdout.write(f"{settings.target}: {what}\n")
        sys.exit(0)
    from . import arbiter, log

    sys.exit(arbiter.run(settings, log.configure(settings.log_level)))
