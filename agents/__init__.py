"""Agents (installed as ``mbrl.agents``): one readable file per algorithm.

Each module registers its agent with ``@AGENTS.register(name, config=ConfigCls)``;
every module in this package is imported when the agent registry is first read,
so a new file is all it takes to add an agent.
"""
