"""Fork echo.py at once and then every 0.15 s (8 in all), so that some child
is nearly always starting up (inside ``patch_all()``); stay up while they do.
"""

import os

import gevent

from geventfork import fork

here = os.path.dirname(os.path.abspath(__file__))
children = [fork(os.path.join(here, "echo.py"))]


def fork_more():
    for _ in range(7):
        gevent.sleep(0.15)
        children.append(fork(os.path.join(here, "echo.py")))


gevent.spawn(fork_more)
