"""The child of ``parent.py``. Usage (by fork): child.py MODE [N]

Says ``{"type": "ready"}`` first, then: 'stream' and 'large' count the
messages (and the characters of their 'data') and report ``{count, bytes}``
after the Nth; 'pingpong' sends each message back; 'idle' only waits.
Same as ``benchmarks/node/ipc_child.js``.
"""

from geventfork import process

mode = process.argv[2]
expected = int(process.argv[3]) if len(process.argv) > 3 else 0
count = 0
bytes_ = 0


@process.on("message")
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


process.send({"type": "ready"})
