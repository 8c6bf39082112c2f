"""Settings and reports of a GNN-RL search: SearchConfig (stored with a run), the per-step and per-episode
reports (the callback payloads) and the final SearchResult; plus where a run's state lives on disk.

Plain data only; the driver that fills them is engine.rl.search.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.rl.ddpg import DDPGConfig
from engine.rl.env import EnvConfig
from engine.rl.ppo import PPOConfig

__all__ = [
    "STATE_FILE",
    "ENCODER_FILE",
    "SearchConfig",
    "StepReport",
    "EpisodeReport",
    "SearchResult",
    "state_dir_for",
]

STATE_FILE = "search_state.pt"
ENCODER_FILE = "encoder.pt"


@dataclass
class SearchConfig:
    """One search run's settings (stored with the run, so resume rebuilds the same run).

    Attributes:
        episodes: episodes to run (with the action wall on, every episode scores one candidate).
        max_scored: stop once this many plans were scored (None: no limit besides `episodes`).
        agent: "ppo" (the paper) or "ddpg".
        encoder: "gnn" (multi-stage GNN) or "features" (the no-GNN ablation: AMC's per-group features).
        seed: seeds the agent (init and sampling); the environment itself is deterministic.
        score_policy_plan: at the end, roll out the policy mean and score it (one more scored plan).
        transfer_from: path of an encoder saved by another run (`encoder.pt`): loaded and frozen, heads train.
        env: environment settings (budget, T, penalty, bounds, wall, motif cap ...).
        ppo: PPO settings (encoder kind is taken from `encoder`).
        ddpg: DDPG settings (encoder kind is taken from `encoder`).
    """

    episodes: int = 40
    max_scored: int | None = None
    agent: str = "ppo"
    encoder: str = "gnn"
    seed: int = 0
    score_policy_plan: bool = True
    transfer_from: str | None = None
    env: EnvConfig = field(default_factory=lambda: EnvConfig(action_wall=True))
    ppo: PPOConfig = field(default_factory=PPOConfig)
    ddpg: DDPGConfig = field(default_factory=DDPGConfig)

    def __post_init__(self) -> None:
        if self.agent not in ("ppo", "ddpg"):
            raise ValueError(f"agent {self.agent!r} is unknown; use 'ppo' or 'ddpg'")
        if self.encoder not in ("gnn", "features"):
            raise ValueError(f"encoder {self.encoder!r} is unknown; use 'gnn' or 'features'")
        if self.episodes < 1:
            raise ValueError(f"episodes={self.episodes} must be >= 1")
        if isinstance(self.env, dict):
            self.env = EnvConfig(**self.env)
        if isinstance(self.ppo, dict):
            self.ppo = PPOConfig(**self.ppo)
        if isinstance(self.ddpg, dict):
            self.ddpg = DDPGConfig(**self.ddpg)
        self.ppo.encoder_kind = self.encoder
        self.ddpg.encoder_kind = self.encoder
        self.env.group_features = self.encoder == "features" or (
            self.agent == "ppo" and self.ppo.join_group_features
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what the store keeps and `from_dict` reads back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        return cls(**data)


@dataclass
class StepReport:
    """One environment step (what the GUI's Step button shows).

    Attributes:
        episode: episode index (0-based) the step belongs to.
        step: step within the episode (1-based).
        action: the raw action per group. keep_ratios: per-group keep ratios after it (group name -> ratio).
        macs_ratio: MACs of the current plan / baseline. reward, done: as the environment returned them.
        episode_report: the finished episode's report when `done` (None while its plan awaits a score).
        pending_plan: with deferred scoring, the plan of an episode that ended feasible, awaiting its score.
    """

    episode: int
    step: int
    action: list[float]
    keep_ratios: dict[str, float]
    macs_ratio: float
    reward: float
    done: bool
    episode_report: EpisodeReport | None = None
    pending_plan: Any = None


@dataclass
class EpisodeReport:
    """One finished episode: the callback payload and (as `extra`) what the store records.

    Attributes:
        episode: 0-based index. reward: final reward. val_acc: val top-1 (%) or None (infeasible).
        macs, macs_ratio: of the final plan. feasible: the budget was met. steps: env steps taken.
        plan: the scored plan as a dict (None when infeasible). keep_ratios: group name -> final keep ratio.
        actions: the raw action vector of each step. embeddings: per-group embeddings of the state the last
        action was taken in (rows follow `embedding_groups`), for the GUI's PCA. best_val_acc, best_episode: best so far.
        timings_s: seconds spent in graph building, gnn (agent forward), land, mask, eval, update and total.
        update: the agent's loss statistics if it updated after this episode.
    """

    episode: int
    reward: float
    val_acc: float | None
    macs: int
    macs_ratio: float
    feasible: bool
    steps: int
    plan: dict[str, Any] | None
    keep_ratios: dict[str, float]
    actions: list[list[float]]
    embeddings: list[list[float]]
    embedding_groups: list[str]
    best_val_acc: float | None
    best_episode: int | None
    timings_s: dict[str, float]
    update: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    """What a finished (or stopped) search returns.

    Attributes:
        run_id: the store's run id (None without a store). episodes: episodes finished. n_scored: plans scored.
        best_plan, best_val_acc, best_episode: the best plan seen (the paper's deliverable).
        policy_plan, policy_val_acc: the plan of the policy mean (val_acc None if not scored).
        macs_ratio: of the best plan. seconds: wall time of this process's part of the run.
        history: the episode reports produced in this process. state_dir: where the state was saved.
        finished: all episodes done (False when stopped early).
    """

    run_id: int | None
    episodes: int
    n_scored: int
    best_plan: Any
    best_val_acc: float | None
    best_episode: int | None
    policy_plan: Any
    policy_val_acc: float | None
    macs_ratio: float | None
    seconds: float
    history: list[EpisodeReport]
    state_dir: str | None
    finished: bool


def state_dir_for(run_id: int) -> Path:
    """`topoprune_home()/runs/<run_id>`, where a stored run keeps its search state (engine.search.driver)."""
    from engine.search.driver import state_dir_for as driver_state_dir

    return driver_state_dir(run_id)
