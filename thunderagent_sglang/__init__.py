"""ThunderAgent-SGLang: program-aware agentic inference on a pinned SGLang."""

__version__ = "0.1.0"

# The one SGLang release our hooks, compatibility list and patches are written against.
PINNED_SGLANG_VERSION = "0.5.23"
