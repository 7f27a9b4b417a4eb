"""The variables a parent sets in a forked child's environment, for its runner.

The child's runner reads each and removes it, so that nothing the child
starts inherits them (Node deletes ``NODE_CHANNEL_FD`` likewise).
"""

from __future__ import annotations

__all__ = [
    "CHANNEL_FD_ENV",
    "SERIALIZATION_ENV",
    "MONKEY_ENV",
    "MAX_MESSAGE_SIZE_ENV",
    "MAX_QUEUED_ENV",
]

#: The parent names the channel's fd in this variable (Node: ``NODE_CHANNEL_FD``).
CHANNEL_FD_ENV = "GEVENTFORK_CHANNEL_FD"
#: ``json`` or ``pickle`` (Node: ``NODE_CHANNEL_SERIALIZATION_MODE``).
SERIALIZATION_ENV = "GEVENTFORK_SERIALIZATION"
#: ``0`` when the child must not be monkey-patched.
MONKEY_ENV = "GEVENTFORK_MONKEY"
#: The largest message the child's channel accepts, in bytes.
MAX_MESSAGE_SIZE_ENV = "GEVENTFORK_MAX_MESSAGE_SIZE"
#: The most bytes the child's channel queues before ``send()`` raises ``ChannelBusyError``.
MAX_QUEUED_ENV = "GEVENTFORK_MAX_QUEUED"
