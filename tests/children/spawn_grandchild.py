"""Start a background grandchild through a shell (``sleep 6 &``), report, and exit.

Argument: the file the grandchild's pid is written to. The message says
what a program this child starts could see of the channel.
"""

import os
import sys

from geventfork import process

pid_file = sys.argv[1]
fd = process.channel.fileno()
process.send(
    {
        "inode": os.fstat(fd).st_ino,
        "inheritable": os.get_inheritable(fd),
        "env": sorted(name for name in os.environ if name.startswith("GEVENTFORK_")),
    }
)
os.system(f"sleep 6 & echo $! > {pid_file}")
