"""Run without fork(): report that there is no channel, and what send() raises."""

from geventfork import ChannelClosedError, process

print(process.connected, process.channel is None)
try:
    process.send("anyone?")
except ChannelClosedError as exc:
    print(type(exc).__name__, exc.code)
