"""GNN-RL: environment, multi-stage GNN encoder, PPO/DDPG agents and the in-memory stepper (engine.rl.search).

The methods `gnnrl` and `gnnrl-nognn` (engine.rl.method) are listed in engine.methods.registry.METHOD_MODULES and
run through the one search driver (engine.search); importing this package registers nothing and imports
nothing heavy (torch-geometric loads only when a search runs).
"""
