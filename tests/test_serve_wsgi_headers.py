"""``geventfork.serve.wsgi.parse_headers``: the message pywsgi's own
``headers_factory`` makes (the email parser's), for any header block.

Plain ``Name: value`` lines take a path without the email parser; anything
else goes to it. Compared here on generated blocks, tricky characters
included, and on a few requests served end to end.
"""

import io

from gevent import pywsgi
from hypothesis import given, settings
from hypothesis import strategies as st

from geventfork.serve.wsgi import parse_headers

# Characters that matter to one parser or the other, and plain ones.
CHARS = st.sampled_from(list("aZ-_: \t\r\x0b\x0c\x1c\x85\xa0\xffFrom:;0~") + ["From "])
LINE = st.lists(CHARS, max_size=12).map("".join)
ENDING = st.sampled_from(["\r\n", "\n"])


def both(raw):
    """(ours, pywsgi's): each message's fields and status, and what is left to read."""
    results = []
    for factory in (parse_headers, pywsgi.headers_factory):
        rfile = io.BytesIO(raw)
        message = factory(rfile, 0)
        results.append((message._headers, message.status, rfile.read()))
    return results


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(LINE, ENDING), max_size=6), ENDING, st.binary(max_size=5))
def test_same_message_as_pywsgi(lines, ending, body):
    raw = "".join(line + end for line, end in lines).encode("latin-1") + ending.encode() + body
    ours, theirs = both(raw)
    assert ours == theirs


def test_plain_request_headers():
    raw = (
        b"Host: example.com\r\nUser-Agent: x/1\r\nAccept:*/*\r\n"
        b"X-Empty:\r\nX-Spaces: \t a b \t\r\n\r\nbody"
    )
    ours, theirs = both(raw)
    assert ours == theirs
    assert ours[0] == [
        ("Host", "example.com"),
        ("User-Agent", "x/1"),
        ("Accept", "*/*"),
        ("X-Empty", ""),
        ("X-Spaces", "a b \t"),
    ]
    assert ours[2] == b"body"


def test_continuation_line_goes_to_the_email_parser():
    raw = b"X-Folded: one\r\n two\r\nHost: h\r\n\r\n"
    ours, theirs = both(raw)
    assert ours == theirs
    assert ours[0][0] == ("X-Folded", "one\r\n two")


def test_line_too_long_and_eof():
    for raw in (b"X: " + b"a" * 70000 + b"\r\n\r\n", b"Host: h\r\n", b""):
        ours, theirs = both(raw)
        assert ours[:2] == theirs[:2]


def test_non_ascii_values_are_latin_1():
    raw = "X-Name: caf\xe9 \xff\r\n\r\n".encode("latin-1")
    ours, theirs = both(raw)
    assert ours == theirs
    assert ours[0] == [("X-Name", "caf\xe9 \xff")]
