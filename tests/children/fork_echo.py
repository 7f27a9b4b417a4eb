"""A parent: fork echo.py and print its pid, then do what the arguments say.

"unref": child.unref(), so only the child's channel is left (it must not keep
us alive); "ref" after it undoes that. "ping": send "ping", print the reply,
disconnect. None of these: stay (the connected child keeps us alive).
"""

import os
import sys

import geventfork

child = geventfork.fork(os.path.join(os.path.dirname(os.path.abspath(__file__)), "echo.py"))
print(child.pid, flush=True)
if "unref" in sys.argv[1:]:
    child.unref()
if "ref" in sys.argv[1:]:
    child.ref()
if "ping" in sys.argv[1:]:

    @child.on("message")
    def on_message(message, handle):
        print(message, flush=True)
        child.disconnect()

    child.send("ping")
