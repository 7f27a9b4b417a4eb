"""The child of ``parent.py``. Usage (by fork): child.py MODE [N [RECEIVE]]

Says ``{"type": "ready"}`` first, then: 'stream' and 'large' count the
messages (and the characters of their 'data') and report ``{count, bytes}``
after the Nth; 'pingpong' sends each message back; 'idle' only waits.
Same as ``benchmarks/node/ipc_child.js``.

RECEIVE is how it takes its messages: ``message`` (the default) with a
``'message'`` listener, as Node's child does, or ``recv`` with
``process.messages()``.

With ``GEVENTFORK_BENCH_PROFILE=PATH`` in its environment it runs under
cProfile from its first message to its Nth and then writes the statistics
to PATH, for ``benchmarks/profile_ipc.py``.
"""

import cProfile
import os

from geventfork import process

mode = process.argv[2]
expected = int(process.argv[3]) if len(process.argv) > 3 else 0
receive = process.argv[4] if len(process.argv) > 4 else "message"
profile_path = os.environ.get("GEVENTFORK_BENCH_PROFILE")
profiler = cProfile.Profile() if profile_path else None
count = 0
bytes_ = 0
profiled = 0


def on_message(m, handle):
    global count, bytes_
    if mode == "pingpong":
        process.send(m)
        return
    count += 1
    if "data" in m:
        bytes_ += len(m["data"])
    if count == expected:
        process.send({"type": "done", "count": count, "bytes": bytes_})


def on_message_profiled(m, handle):
    """``on_message`` with cProfile on from the first message to the Nth."""
    global profiled
    if profiled == 0:
        profiler.enable()
    on_message(m, handle)
    profiled += 1
    if profiled == expected:
        profiler.disable()
        profiler.dump_stats(profile_path)


handler = on_message if profiler is None else on_message_profiled
if receive == "recv":
    process.send({"type": "ready"})
    for message, handle in process.messages():
        handler(message, handle)
else:
    process.on("message", handler)
    process.send({"type": "ready"})
