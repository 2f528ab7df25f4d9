"""The program events the server sends to the tool sidecar (``POST /events``), named once.

Pure: the scheduler process sends them (``engine/sidecar_events.py``), the sidecar acts on
them (``sidecar/manager.py``).
"""

TERMINATED = "terminated"  # release, final marker or idle expiry: its environments go
PAUSED = "paused"  # the scheduler paused it: its environments may be paused too
RESUMED = "resumed"  # resumed: its environments come back
PREPARE = "prepare"  # a call of a paused program is held: set its environments up now
EVENTS = (TERMINATED, PAUSED, RESUMED, PREPARE)
