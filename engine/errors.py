"""Errors a user can cause, each carrying one message that says what was wrong and what to do.

The CLI turns a TopoPruneError into one line on stderr and exit code 1; the GUI shows it with st.error.
Anything else that escapes is a bug and surfaces as a traceback.
"""


class TopoPruneError(Exception):
    """Base class of every error the user can cause and fix."""


class CheckpointError(TopoPruneError):
    """A weights file is not a checkpoint, is truncated, unsafe, or does not fit the architecture."""


class DataError(TopoPruneError):
    """A dataset is unknown, or its folder is missing, empty, or holds unusable images."""


class ModelError(TopoPruneError):
    """A model name is unknown, or a model cannot be traced or pruned."""


class BudgetError(TopoPruneError):
    """A MACs budget is outside (0, 1] or cannot be reached under the keep bounds."""


class StoreError(TopoPruneError):
    """The run store is locked, corrupt, or does not hold the requested run."""


class EnvironmentMismatchError(TopoPruneError):
    """The installed torch and torchvision builds do not work together."""


class PlanError(TopoPruneError, ValueError):
    """A pruning plan is malformed, of an unknown version, for another model, or names an unknown criterion."""
