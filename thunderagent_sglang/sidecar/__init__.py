"""The tool-environment sidecar: program-owned sandboxes, lifecycle GC, disk caps, ports.

``python -m thunderagent_sglang.sidecar`` runs it; see ``settings.py`` for the flags and
``app.py`` for the HTTP API (docs/interfaces.md, section "Sidecar").
"""
