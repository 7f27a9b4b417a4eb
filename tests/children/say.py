"""Write the first argument to stdout and the second to stderr."""

import sys

from geventfork import process

sys.stdout.write(process.argv[2])
sys.stderr.write(process.argv[3])
