"""Echo every message back to the parent."""

from geventfork import process

process.on("message", lambda message, handle: process.send(message))
