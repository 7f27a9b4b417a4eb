"""``geventfork serve``: the drop-in pre-fork server for existing apps (see README)."""
