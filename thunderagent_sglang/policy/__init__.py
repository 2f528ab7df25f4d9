"""Pure Python policy: accounting, thrash check, eviction keys (no SGLang import)."""
