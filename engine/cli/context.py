"""What every CLI command shares: resolving the common options into a model, data, device and run store,
progress bars on stderr, and marking the active run interrupted or failed when a command stops early.

No command logic lives here; each command module builds on this.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from engine.errors import CheckpointError, TopoPruneError
from engine.services import LoadedModel, load_shipped_baseline

__all__ = ["CommandContext", "LoadedModel", "Progress", "load_shipped_baseline"]


class Progress:
    """A tqdm bar on stderr when stderr is a terminal and output is not JSON; otherwise silent."""

    def __init__(self, *, total: int | None, desc: str, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)

    def update_to(self, done: int, total: int | None = None, message: str | None = None) -> None:
        """Move the bar to ``done`` of ``total`` steps, showing ``message``."""
        if self._bar is None:
            return
        if total:
            self._bar.total = total
        self._bar.n = done
        if message:
            self._bar.set_postfix_str(message[:60], refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class CommandContext:
    """The parsed arguments plus lazily opened resources (store, data) for one CLI invocation."""

    def __init__(self, args: argparse.Namespace, *, argv: list[str] | None = None) -> None:
        self.args = args
        self.argv = list(argv or [])
        self.json: bool = bool(getattr(args, "json", False))
        self.active_run_id: int | None = None  # a run this command owns; marked interrupted on Ctrl-C
        self.active_run_resumable = False  # on an error, such a run stays resumable (interrupted, not failed)
        self._store = None
        self._data = None
        self._bars: list[Progress] = []

    # ------------------------------------------------------------------ output
    @property
    def command_line(self) -> str:
        """The invocation as a shell line (``topoprune train ...``), recorded in recipes and runs."""
        import shlex

        return shlex.join(["topoprune", *self.argv])

    def log(self, message: str) -> None:
        """One line of progress information on stderr (never on stdout)."""
        sys.stderr.write(message.rstrip("\n") + "\n")
        sys.stderr.flush()

    def progress(self, *, total: int | None, desc: str) -> Progress:
        """A progress bar (tqdm on stderr only when stderr is a TTY and not --json)."""
        bar = Progress(total=total, desc=desc, enabled=not self.json and sys.stderr.isatty())
        self._bars.append(bar)
        return bar

    # ------------------------------------------------------------------ resources
    def store(self, *, read_only: bool = False):
        """The run store under $TOPOPRUNE_HOME (opened on first use; ``read_only`` for commands that only
        read it, such as ``runs``: nothing is created, migrated or marked)."""
        if self._store is not None and self._store.read_only and not read_only:
            self._store.close()
            self._store = None
        if self._store is None:
            from engine.store import RunStore

            self._store = RunStore(read_only=read_only)
        return self._store

    def device(self) -> str:
        """The --device value, checked to exist."""
        device = getattr(self.args, "device", "cpu") or "cpu"
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise TopoPruneError(
                    "--device cuda was given but no CUDA device is available; use --device cpu"
                )
        return device

    def data(self):
        """The dataset named by --dataset/--data-dir/--seed/--input-size (loaded once)."""
        if self._data is None:
            from engine.data import load_data

            a = self.args
            self._data = load_data(a.dataset, data_dir=a.data_dir, seed=a.seed, input_size=a.input_size)
        return self._data

    def load_model(
        self, name: str, *, num_classes: int | None = None, need_data: bool = False
    ) -> LoadedModel:
        """Build ``name`` with the weights named by --checkpoint (random init when none).

        Args:
            name: a zoo model name.
            num_classes: classifier size; default --num-classes, else the dataset's (when ``need_data``),
                else the checkpoint's, else 10 for the CIFAR zoo and 1000 for torchvision models.
            need_data: the command uses the dataset, so the class count comes from it.
        """
        from engine.checkpoints import NonFiniteWeightsWarning
        from engine.services import ModelRequest, load_model
        from engine.zoo import default_input_size

        a = self.args
        if need_data and a.num_classes and a.num_classes != self.data().num_classes:
            raise TopoPruneError(
                f"--num-classes {a.num_classes} does not match dataset {self.data().name}, which has "
                f"{self.data().num_classes} classes; drop --num-classes (it defaults to the dataset's)"
            )
        num_classes = num_classes or a.num_classes or (self.data().num_classes if need_data else None)
        input_size = a.input_size or (self.data().input_size if need_data else default_input_size(name))
        request = ModelRequest(
            name,
            weights=a.checkpoint or "random",
            dataset=getattr(a, "dataset", None),
            num_classes=num_classes,
            width=a.width,
            input_size=input_size,
            allow_nonfinite=bool(getattr(a, "allow_nonfinite", False)),
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NonFiniteWeightsWarning)
            loaded = load_model(request)
        for warning in caught:  # one line each on stderr, not Python's file:line warning format
            if issubclass(warning.category, NonFiniteWeightsWarning):
                self.log(f"topoprune: warning: {warning.message}")
        if need_data and a.checkpoint is not None and loaded.num_classes != self.data().num_classes:
            raise CheckpointError(
                f"checkpoint {loaded.weights} has {loaded.num_classes} classes but dataset {self.data().name} has "
                f"{self.data().num_classes}; use a checkpoint trained on {self.data().name}"
            )
        return loaded

    def example_inputs(self, loaded: LoadedModel):
        """A zero batch of one image at the model's input size."""
        import torch

        return torch.zeros(1, 3, loaded.input_size, loaded.input_size)

    # ------------------------------------------------------------------ ending
    def mark_interrupted(self) -> None:
        """Mark the active run interrupted (Ctrl-C / SIGTERM); never raises."""
        self._set_active_status("interrupted")

    def mark_failed(self, exc: BaseException) -> None:
        """Record the error on the active run: ``failed``, or ``interrupted`` when its saved state lets it be
        resumed once the cause is fixed; never raises."""
        status = "interrupted" if self.active_run_resumable else "failed"
        self._set_active_status(status, error=f"{type(exc).__name__}: {exc}")

    def _set_active_status(self, status: str, *, error: str | None = None) -> None:
        if self.active_run_id is None or self._store is None:
            return
        try:
            run = self._store.get_run(self.active_run_id)
            if run.status in ("running",):
                self._store.update_run(
                    self.active_run_id, status=status, extra={"error": error} if error else None
                )
        except Exception:  # the store itself may be the problem; the exit code still says what happened
            pass

    def close(self) -> None:
        """Close bars and the store."""
        for bar in self._bars:
            bar.close()
        if self._store is not None:
            self._store.close()
            self._store = None
