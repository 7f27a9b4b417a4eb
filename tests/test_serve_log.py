"""``geventfork serve``'s log lines: gunicorn's format, on stderr, once each."""

import logging
import os
import re

from geventfork.serve import log

LINE = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[(\d+)\] \[([A-Z]+)\] (.*)\Z")


def test_lines_in_gunicorns_format_at_the_level_asked(capsys):
    logger = log.configure("INFO", "geventfork.serve.test")
    logger.info("listening on http://127.0.0.1:8000")
    logger.debug("not shown at info")
    logger.error("worker 12 exited with status 1")
    lines = capsys.readouterr().err.splitlines()
    assert [LINE.match(line).groups() for line in lines] == [
        (str(os.getpid()), "INFO", "listening on http://127.0.0.1:8000"),
        (str(os.getpid()), "ERROR", "worker 12 exited with status 1"),
    ]


def test_configure_again_replaces_its_handler(capsys):
    log.configure("debug", "geventfork.serve.test2")
    logger = log.configure("warning", "geventfork.serve.test2")
    logger.info("hidden")
    logger.warning("once")
    assert [LINE.match(line).group(3) for line in capsys.readouterr().err.splitlines()] == ["once"]
    assert not logger.propagate and len(logger.handlers) == 1
    assert logging.getLogger("geventfork.serve.test2") is logger
