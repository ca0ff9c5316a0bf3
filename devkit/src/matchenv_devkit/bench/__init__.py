"""``make bench``: each measure beside its baseline in the same run, on this machine's own broker, database and
control plane. Never part of ``make test``; nothing here asserts a timing."""
