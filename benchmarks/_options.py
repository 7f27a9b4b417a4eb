"""What the benchmark scripts' command lines share."""

from __future__ import annotations

import argparse

__all__ = ["names"]


def names(parser: argparse.ArgumentParser, text: str, known: tuple, groups: dict) -> list:
    """Expand a comma-separated list of names and groups, kept in ``known``'s order."""
    chosen = set()
    for name in filter(None, text.split(",")):
        if name not in known and name not in groups:
            parser.error(f"unknown name {name!r}: choose from {', '.join((*known, *groups))}")
        chosen.update(groups.get(name, (name,)))
    return [name for name in known if name in chosen]
