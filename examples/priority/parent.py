"""Node's "sending a socket object" example: the parent accepts, children answer.

Usage: python -m geventfork examples/priority/parent.py [PORT] [SPECIAL_ADDRESS] [HOST]

PORT defaults to 1337 (0 picks a free one) and HOST to 0.0.0.0, as in Node's
example; the address is printed once listening.

Connections from SPECIAL_ADDRESS (default 74.125.127.100, as in Node's docs)
go to the 'special' child, the rest to the 'normal' child.
"""

import os
import sys

from geventfork import fork, net

here = os.path.dirname(os.path.abspath(__file__))
port = int(sys.argv[1]) if len(sys.argv) > 1 else 1337
special_address = sys.argv[2] if len(sys.argv) > 2 else "74.125.127.100"
host = sys.argv[3] if len(sys.argv) > 3 else "0.0.0.0"

normal = fork(os.path.join(here, "subprocess.py"), ["normal"])
special = fork(os.path.join(here, "subprocess.py"), ["special"])
server = net.create_server(pause_on_connect=True)


@server.on("connection")
def on_connection(socket):
    if socket.remote_address == special_address:
        special.send("socket", socket)
        return
    normal.send("socket", socket)


server.listen(
    port,
    host,
    callback=lambda: print("listening on {address}:{port}".format(**server.address()), flush=True),
)
