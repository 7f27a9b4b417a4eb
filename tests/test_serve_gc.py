"""``geventfork serve`` workers freeze the heap their app's import made.

A full garbage collection walks every tracked object: with an app imported
(Flask's), one took 30-50 ms, the worker's connections stalled meanwhile.
``gc.freeze()`` after the import leaves those objects out of every later
collection; the app answers how many objects are frozen in its worker.
"""

from __future__ import annotations

import pytest
from test_serve import get, serve  # noqa: F401  # the fixture

pytestmark = pytest.mark.timeout(90)

APP = """
import gc

def app(environ, start_response):
    body = str(gc.get_freeze_count()).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def test_worker_heap_is_frozen_after_the_app_import(serve, tmp_path):  # noqa: F811
    (tmp_path / "gcapp.py").write_text(APP)
    served = serve("gcapp:app", "-w", "1", cwd=str(tmp_path)).started()
    status, body = get(served.port)
    assert status == 200
    # The app module, gevent, geventfork and the stdlib they import: thousands.
    assert int(body) > 1000
