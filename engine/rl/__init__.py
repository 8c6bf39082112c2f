"""GNN-RL: environment, multi-stage GNN encoder, PPO/DDPG agents and the steppable, resumable search driver.

Importing the package registers the methods `gnnrl` and `gnnrl-nognn` in engine.methods (engine.rl.method);
the heavy modules (torch-geometric) load only when a search runs. Entry points: engine.rl.search.run_search,
SearchRun (step / run_episode / run / pause / resume) and resume_search.
"""

from engine.rl import method as _method  # noqa: F401  (registers gnnrl, gnnrl-nognn)
