"""``setup.cfg``: a gevent with a wheel on every supported Python.

gevent 26.x dropped Python 3.9, but its 26.4-26.7 sdists still claim it, so
without a cap pip on 3.9 compiled gevent from source (4 min 50 s). The
markers must give 3.9 the newest gevent with a 3.9 wheel (25.9.1) and leave
newer Pythons uncapped. (Measured: `pip install .` into a fresh 3.9 venv
takes seconds with the cap.)
"""

import configparser
import os

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def install_requires(python_version):
    """``{name: SpecifierSet}`` that pip would apply on ``python_version``."""
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    lines = [line for line in config["options"]["install_requires"].splitlines() if line.strip()]
    chosen = {}
    for line in lines:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(
            {"python_version": python_version}
        ):
            assert requirement.name not in chosen, (
                f"two requirements for {requirement.name} on {python_version}"
            )
            chosen[requirement.name] = requirement.specifier
    return chosen


def test_python_3_9_gets_the_last_gevent_with_a_wheel():
    gevent = install_requires("3.9")["gevent"]
    assert Version("25.9.1") in gevent
    assert Version("26.4.0") not in gevent and Version("26.9.0") not in gevent
    assert Version("24.2.1") in gevent  # the tested floor


@pytest.mark.parametrize("python_version", ["3.10", "3.11", "3.12", "3.13"])
def test_newer_pythons_get_current_gevent(python_version):
    requires = install_requires(python_version)
    assert Version("26.9.0") in requires["gevent"] and Version("99.0") in requires["gevent"]
    assert Version("24.2.1") in requires["gevent"]
    assert "greenlet" in requires


def test_python_requires_matches_the_markers():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    assert config["options"]["python_requires"] == ">=3.9"
