"""Write bytes that are no valid frame straight onto the channel's fd."""

import os

from geventfork import process

os.write(process.channel.fileno(), b"\xffGARBAGE, NOT A FRAME\n" * 4)
process.on("message", lambda message, handle: None)  # stay until the parent hangs up
