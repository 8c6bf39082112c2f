"""The ``topoprune`` command: argument parsing, dispatch to the command modules, output and exit codes.

Exit codes: 0 success, 2 usage error (unknown command or option, a missing argument, a word where a number
belongs), 1 a user-fixable failure (one ``topoprune: error: ...`` line on stderr, no traceback), 130
interrupted. A number outside its accepted range is a failure (1) wherever it is checked, in parsing or later. With ``--json`` stdout carries exactly one JSON object; progress and
logs go to stderr. Engine modules are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from engine.errors import TopoPruneError

DATASET_CHOICES = (
    "shapes10",
    "fashion-mnist",
    "cifar10",
    "cifar100",
    "imagefolder",
)  # = engine.data.DATASETS
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_INPUT_SIZE = 1024  # pixels per side; 1024x1024 already needs ~20x ImageNet's activation memory
MIN_INPUT_SIZE = 8
MAX_WIDTH = 8.0  # width multiplier; 8x ResNet-50 is ~1.6 G parameters
_RANGE_MARK = "\x00range\x00"  # tags a parse-time range error so it exits like every other range error


class RangeArgumentError(TopoPruneError):
    """A command-line number outside its accepted range (exit 1, like the range checks made after parsing)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        if _RANGE_MARK in message:
            raise RangeArgumentError(message.replace(_RANGE_MARK, ""))
        super().error(message)


def _out_of_range(message: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(_RANGE_MARK + message)


def _common_options() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument(
        "--dataset", choices=DATASET_CHOICES, default="shapes10", help="dataset (default: shapes10)"
    )
    g.add_argument(
        "--data-dir", metavar="PATH", help="CIFAR batches, ImageFolder tree or Fashion-MNIST idx folder"
    )
    g.add_argument(
        "--checkpoint", metavar="PATH|shipped", help="weights file (.safetensors / state_dict) or 'shipped'"
    )
    g.add_argument(
        "--input-size",
        type=_input_size,
        metavar="N",
        help=f"square input size in pixels ({MIN_INPUT_SIZE}..{MAX_INPUT_SIZE})",
    )
    g.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default: 0)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch device (default: cpu)")
    g.add_argument(
        "--num-classes", type=_positive_int, metavar="N", help="classifier size (default: dataset's)"
    )
    g.add_argument(
        "--width",
        type=_width,
        default=1.0,
        metavar="W",
        help=f"width multiplier in (0, {MAX_WIDTH:g}] (default: 1)",
    )
    g.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="load a --checkpoint holding NaN or Inf values (with a warning) instead of refusing it",
    )
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    g.add_argument(
        "--threads",
        type=_positive_int,
        default=int(os.environ.get("TOPOPRUNE_THREADS", 1)),
        metavar="N",
        help="torch compute threads of this process (default 1, or $TOPOPRUNE_THREADS: "
        "the agents' small ops run ~10x slower with 2 threads on a 2-core machine)",
    )
    return common


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise _out_of_range(f"expected a number >= 1, got {value}")
    return value


MAX_RUN_ID = 2**63 - 1  # SQLite's INTEGER range


def _run_id(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_RUN_ID:
        raise _out_of_range(
            f"run id {value} is beyond the store's range (1..{MAX_RUN_ID}); `topoprune runs` lists the runs"
        )
    return value


def _input_size(text: str) -> int:
    value = _positive_int(text)
    if not MIN_INPUT_SIZE <= value <= MAX_INPUT_SIZE:  # checked before any tensor is allocated
        raise _out_of_range(f"{value} is outside {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} pixels per side")
    return value


def _width(text: str) -> float:
    value = _positive_float(text)
    if value > MAX_WIDTH:  # checked before any layer is built
        raise _out_of_range(f"width multiplier {value:g} is above the limit of {MAX_WIDTH:g}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise _out_of_range(f"expected a number >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise _out_of_range(f"expected a finite number > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The full ``topoprune`` argument parser (one sub-command per DESIGN.md command)."""
    from engine import __version__
    from engine.cli import model_cmds, prune_cmds, run_cmds

    parser = _Parser(
        prog="topoprune",
        description="Topology-aware, FLOPs-constrained channel pruning of CNNs (GNN-RL and baselines).",
        epilog="Runs and caches live under $TOPOPRUNE_HOME (default: ~/.local/share/topoprune).",
    )
    parser.add_argument("--version", action="version", version=f"topoprune {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_options()
    for module in (model_cmds, prune_cmds, run_cmds):
        module.register(commands, common)
    return parser


# ----------------------------------------------------------------------------------------------- output
def format_human(result: dict[str, Any]) -> str:
    """Default text rendering of a result: one ``key: value`` line per scalar, nested values summarised."""
    lines = []
    for key, value in result.items():
        if isinstance(value, float):
            lines.append(f"{key}: {value:.4g}")
        elif isinstance(value, dict):
            lines.append(f"{key}: {{{len(value)} entries}}" if len(value) > 6 else f"{key}: {value}")
        elif isinstance(value, list):
            lines.append(f"{key}: [{len(value)} items]" if len(value) > 6 else f"{key}: {value}")
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def emit(
    result: dict[str, Any],
    *,
    as_json: bool,
    human: Callable[[dict[str, Any]], str] | None = None,
    stream: Any = None,
) -> None:
    """Print a command's result: one strict JSON object, or its human rendering."""
    from engine.store.codec import strict_json

    out = stream or sys.stdout
    if as_json:
        out.write(json.dumps(strict_json(result), sort_keys=False) + "\n")
    else:
        out.write((human or format_human)(result).rstrip("\n") + "\n")
    out.flush()


def _fail(message: str) -> int:
    # Exactly one line: drop any traceback text a wrapped library error carried, then fold whitespace.
    text = str(message).split("Traceback (most recent call last)")[0]
    first = " ".join(text.split()).rstrip(" :")
    sys.stderr.write(f"topoprune: error: {first}\n")
    sys.stderr.flush()
    return EXIT_FAILURE


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Treat SIGTERM like Ctrl-C (so a killed search is marked interrupted); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _quiet_library_noise() -> None:
    """Hide library chatter that says nothing to a TopoPrune user (TOPOPRUNE_DEBUG=1 shows it)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def _interrupted(ctx: Any) -> int:
    """One line and exit code 130; a second Ctrl-C while the run is being marked stops at once, same line."""
    line = "topoprune: interrupted"
    try:
        ctx.mark_interrupted()
        if ctx.active_run_id is not None:
            line += f"; run {ctx.active_run_id} is marked interrupted"
            if ctx.active_run_resumable:
                line += f" (`topoprune resume {ctx.active_run_id}` continues it)"
    except KeyboardInterrupt:  # the next open of the store marks the run: its process is gone
        line = "topoprune: interrupted again; stopped at once"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``topoprune`` with ``argv`` (default: sys.argv[1:]); returns the exit code."""
    from engine.cli.context import CommandContext

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    except RangeArgumentError as exc:
        return _fail(str(exc))
    ctx = CommandContext(args, argv=list(sys.argv[1:] if argv is None else argv))
    debug = bool(os.environ.get("TOPOPRUNE_DEBUG"))
    if not debug:
        _quiet_library_noise()
    try:
        with _sigterm_as_interrupt():
            # With --json, anything a library prints goes to stderr so stdout holds only the JSON object.
            redirect = contextlib.redirect_stdout(sys.stderr) if ctx.json else contextlib.nullcontext()
            with redirect:
                import torch

                torch.set_num_threads(
                    int(getattr(args, "threads", 1))
                )  # the process's one setting, set once here
                if getattr(args, "device", "cpu") != "cpu":
                    ctx.device()  # fail before any slow loading
                result, human = args.handler(ctx)
    except KeyboardInterrupt:
        return _interrupted(ctx)
    except (TopoPruneError, ValueError) as exc:
        ctx.mark_failed(exc)
        if debug:
            raise
        return _fail(str(exc) or type(exc).__name__)
    except OSError as exc:  # a path the user gave cannot be read or written (permissions, full disk, ...)
        ctx.mark_failed(exc)
        if debug:
            raise
        return _fail(f"{exc}; check the path and its permissions")
    except Exception as exc:  # a bug: still one line, the traceback on request
        ctx.mark_failed(exc)
        if debug:
            raise
        return _fail(
            f"internal error ({type(exc).__name__}: {exc}); rerun with TOPOPRUNE_DEBUG=1 for the traceback"
        )
    finally:
        try:
            ctx.close()
        except KeyboardInterrupt:  # Ctrl-C again while closing: the exit code and line are already decided
            pass
    emit(result, as_json=ctx.json, human=human)
    return EXIT_OK


__all__ = ["build_parser", "emit", "format_human", "main"]
