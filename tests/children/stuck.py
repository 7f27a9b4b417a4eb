"""Blocks its whole process in an unpatched sleep: its channel reads nothing.

Run with ``monkey=False``; killed by the test's teardown.
"""

import time

time.sleep(60)
