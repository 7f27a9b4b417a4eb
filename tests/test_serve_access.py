"""``geventfork.serve.access``: the access log's two line formats and its file."""

import os
import re
import time

from geventfork.serve import access


def test_wsgi_line_is_gunicorns_format_plus_pool_and_pid():
    when = 1796022000.0  # 2026-11-30 07:00:00 UTC
    line = access.wsgi_line(
        ("127.0.0.1", 52044), "GET /path HTTP/1.1", "200", 12, 0.00312, "default", 1234, when
    )
    stamp = access.timestamp(when)
    assert (
        line == f'127.0.0.1 - - [{stamp}] "GET /path HTTP/1.1" 200 12 0.0031 pool=default pid=1234'
    )
    assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}", stamp)


def test_timestamp_in_utc():
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        assert access.timestamp(1796022000.0) == "30/Nov/2026:07:00:00 +0000"
    finally:
        del os.environ["TZ"]
        time.tzset()


def test_wsgi_line_without_body_or_peer_and_with_a_hostile_request_line():
    line = access.wsgi_line("", 'GET /"x\x1b HTTP/1.1', "204", 0, 0.5, "slow", 7)
    assert line.startswith("- - - [")
    assert '"GET /\\"x\\x1b HTTP/1.1" 204 - 0.5000 pool=slow pid=7' in line


def test_handler_line():
    assert (
        access.handler_line(("127.0.0.1", 52044), 40, 12, 0.0031, "default", 1234)
        == "127.0.0.1:52044 pool=default pid=1234 in=40 out=12 0.0031"
    )
    assert access.handler_line(("::1", 80, 0, 0), None, None, 1, "p", 1) == (
        "[::1]:80 pool=p pid=1 in=- out=- 1.0000"
    )
    assert access.handler_line("", 1, 2, 0, "p", 1).startswith("- pool=p")


def test_access_log_file_is_appended_one_line_per_write(tmp_path):
    path = tmp_path / "access.log"
    path.write_text("earlier\n")
    log = access.open_access_log(str(path))
    try:
        log.write("one")
        log.write("two")
    finally:
        log.close()
    assert path.read_text() == "earlier\none\ntwo\n"
    assert access.open_access_log(None) is None
    assert access.open_access_log("-").fd == 2


def test_a_request_line_too_long_is_cut():
    line = access.wsgi_line(
        ("127.0.0.1", 1), "GET /" + "a" * 70000 + " HTTP/1.1", "414", 0, 0.001, "default", 1
    )
    assert len(line) < 4300
    assert '..." 414' in line
