"""Write a line to stdout and one to stderr, read stdin to its end, then exit."""

import sys

print("to stdout", flush=True)
print("to stderr", file=sys.stderr, flush=True)
data = sys.stdin.read()
print(f"stdin: {data!r}", flush=True)
