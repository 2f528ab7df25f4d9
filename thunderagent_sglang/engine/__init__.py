"""SGLang glue: the only package (with ``compat.py``) allowed to import ``sglang``."""
