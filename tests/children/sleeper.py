"""Sleep for a minute (a timer keeps it alive; it listens to nothing)."""

import gevent

gevent.sleep(60)
