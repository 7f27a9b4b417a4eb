"""Set up what the arguments name, say "ready", and let the runner decide.

Arguments: "message" / "disconnect" (add a listener), "ref" / "unref"
(call process.channel.ref() / unref()).
"""

from geventfork import process

for action in process.argv[2:]:
    if action in ("message", "disconnect"):
        process.on(action, lambda *args: None)
    else:
        getattr(process.channel, action)()
process.send("ready")
