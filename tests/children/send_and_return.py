"""Send a message of the size in bytes given, with a callback, and return at once.

The callback's error (None) follows as a second message. Nothing listens:
the runner must still flush both before it lets the child exit.
"""

from geventfork import process

returned = process.send("x" * int(process.argv[2]), callback=lambda err: process.send(repr(err)))
process.send(returned)
