"""``python -m geventfork SCRIPT [ARGS...]``."""

from ._main import main

main()
