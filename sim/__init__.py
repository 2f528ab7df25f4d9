"""A discrete-event simulator of agent programs served by an engine, driven by the same pure
policy code the engine runs (``thunderagent_sglang.policy``). Not part of the served package.
See ``docs/structure.md`` and the README's "Simulator" section for what is built and what is not.
"""
