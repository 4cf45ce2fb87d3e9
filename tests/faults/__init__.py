"""Faults and hostile input: signals, kills, full disks, non-finite values, malformed recipes and files,
plugins that misbehave."""
