"""Pure Python: programs, their identity and lifecycle (no SGLang import)."""
