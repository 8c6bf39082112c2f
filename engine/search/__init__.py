"""One search protocol (engine.search.protocol) and one recorded-run driver (engine.search.driver) for every
search method: scoring, recording, pause / step / stop / resume live here and nowhere else."""

from engine.search.driver import STATE_FILE, SearchDriver, SearchStateError, drive, state_dir_for
from engine.search.protocol import Proposal, Scored, SearchMethod, SubStep, rng_state, set_rng_state

__all__ = [
    "STATE_FILE",
    "Proposal",
    "Scored",
    "SearchDriver",
    "SearchMethod",
    "SearchStateError",
    "SubStep",
    "drive",
    "rng_state",
    "set_rng_state",
    "state_dir_for",
]
