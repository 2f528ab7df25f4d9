"""The program-aware router: ``python -m thunderagent_sglang.router --backends URL1,URL2``."""
