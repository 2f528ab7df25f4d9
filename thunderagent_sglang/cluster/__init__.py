"""The fleet on Ray: ``python -m thunderagent_sglang.cluster up|status|down`` starts our
replicas (one Ray actor each, launching our server on its node) and the router."""
