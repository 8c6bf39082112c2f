"""The method registry: every pruning method behind one name, with its description and typed options.

The CLI and the GUI list and validate options from here; the methods themselves live in sibling modules.
This module knows nothing about any particular method and does no scoring itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from engine.errors import TopoPruneError

if TYPE_CHECKING:
    import torch.nn as nn

    from engine.data import DataSplits
    from engine.evaluate import Scorer, ScoringConfig
    from engine.pruning import PruningPlan
    from engine.pruning.budget import Budget

MethodKind = Literal["oneshot", "search"]
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class MethodError(TopoPruneError, ValueError):
    """An unknown method name or an invalid method option (message lists the accepted ones)."""


@dataclass(frozen=True)
class OptionSpec:
    """One option of a method: its type, default, help text and accepted values.

    Attributes:
        name: Option name as written in Python (`n_candidates`); the CLI spells it `--n-candidates`.
        type: One of `int`, `float`, `str`, `bool`.
        default: Value used when the option is not given.
        help: One sentence for `--help` and GUI tooltips.
        choices: Accepted values, or None for any value of `type`.
        min: Smallest accepted value (numbers only), inclusive.
        max: Largest accepted value (numbers only), inclusive.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None

    def coerce(self, value: Any, *, method: str = "") -> Any:
        """Convert `value` (possibly a CLI string) to this option's type and check its range.

        Raises:
            MethodError: The value has the wrong type, is not among `choices`, or is outside [min, max].
        """
        where = f"option '{self.name}' of method '{method}'" if method else f"option '{self.name}'"
        try:
            if self.type is bool:
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low not in _TRUE | _FALSE:
                        raise ValueError(value)
                    out: Any = low in _TRUE
                elif isinstance(value, bool | int):
                    out = bool(value)
                else:
                    raise ValueError(value)
            elif self.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError(value)
                out = int(value)
            elif self.type is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                out = float(value)
            else:
                out = self.type(value)
        except (TypeError, ValueError):
            raise MethodError(f"{where} expects a {self.type.__name__}, got {value!r}; {self.help}") from None
        if self.choices is not None and out not in self.choices:
            raise MethodError(f"{where} got {out!r}; accepted values: {', '.join(map(str, self.choices))}")
        if self.min is not None and out < self.min:
            raise MethodError(f"{where} got {out!r}; it must be >= {self.min}")
        if self.max is not None and out > self.max:
            raise MethodError(f"{where} got {out!r}; it must be <= {self.max}")
        return out


@dataclass(frozen=True)
class Candidate:
    """One scored plan produced during a method run.

    Attributes:
        index: 0-based position in the run's candidate history.
        plan: The pruning plan.
        val_acc: Val top-1 (%) under the shared scoring protocol.
        macs_ratio: MACs of the plan / MACs of the baseline.
        meta: Method-specific extras (episode, reward, noise, ...), JSON-serialisable.
    """

    index: int
    plan: PruningPlan
    val_acc: float
    macs_ratio: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "index": self.index,
            "plan": self.plan.to_dict(),
            "val_acc": self.val_acc,
            "macs_ratio": self.macs_ratio,
            "meta": dict(self.meta),
        }


@dataclass(frozen=True)
class MethodEvent:
    """Progress report sent to `MethodContext.callback`.

    Attributes:
        method: Method name.
        step: Steps done so far (episodes, candidates, removals, groups ...).
        total: Expected number of steps, or 0 when unknown.
        message: Short human-readable status.
        candidate: The candidate just scored, if this event reports one.
    """

    method: str
    step: int
    total: int
    message: str
    candidate: Candidate | None = None


@dataclass
class MethodContext:
    """Everything a method needs; the same for every method.

    Attributes:
        model: The unpruned baseline. Methods never modify it (they work on copies).
        topology: `build_topology(model, ...)` of that baseline.
        data: Dataset splits; methods use train and val only, never test.
        budget: Fraction of the baseline's value of `budget_metric` the plan may keep, in (0, 1].
        seed: Seed for every random choice of the method.
        scoring: Scoring settings used when `scorer` is None.
        scorer: Shared scorer; built lazily from `scoring` when None.
        callback: Receives a `MethodEvent` for progress and for every scored candidate.
        should_stop: Polled between steps; a method returns its best-so-far plan when it says True.
        store: Optional run store (engine.store.RunStore) for methods that record episodes.
        run_id: Run id in `store`, if any.
        round_to: Channel counts are rounded to multiples of this.
        budget_metric: What `budget` is a fraction of: one of engine.pruning.budget.METRICS (default MACs).
        resume: Search methods continue the stored run `run_id` from its saved state (engine.search.driver).
        batch_size: Plans a search method proposes and has scored per batch.
        score_fn: plan -> val top-1 (%) instead of the shared scorer (tests, synthetic runs).
        executor: Where search methods' batches are scored (engine.search.executors); None = this process.
        rescore_top: Search methods re-score their top plans on `rescore_val_size` val images (None = the whole
            val split) and the re-scored best wins; 0 = off.
    """

    model: nn.Module
    topology: Any
    data: DataSplits
    budget: float
    seed: int = 0
    scoring: ScoringConfig | None = None
    scorer: Scorer | None = None
    callback: Callable[[MethodEvent], None] | None = None
    should_stop: Callable[[], bool] | None = None
    store: Any | None = None
    run_id: int | None = None
    round_to: int = 1
    budget_metric: str = "macs"
    resume: bool = False
    batch_size: int = 1
    score_fn: Callable[[PruningPlan], float] | None = None
    executor: Any | None = None
    rescore_top: int = 0
    rescore_val_size: int | None = None

    @property
    def budget_spec(self) -> Budget:
        """`budget` and `budget_metric` as a Budget (validated: BudgetError on a bad metric or fraction)."""
        from engine.pruning.budget import Budget

        return Budget(self.budget_metric, float(self.budget))

    def get_scorer(self) -> Scorer:
        """The shared scorer, created on first use from `scoring`."""
        if self.scorer is None:
            from engine.evaluate import Scorer, ScoringConfig

            self.scorer = Scorer(self.model, self.topology, self.data, self.scoring or ScoringConfig())
        return self.scorer

    def score(self, plan: PruningPlan) -> float:
        """Val top-1 (%) of `plan` under the shared scoring protocol (or `score_fn` when set)."""
        if self.score_fn is not None:
            return float(self.score_fn(plan))
        return float(self.get_scorer().score(plan))

    def emit(
        self, method: str, step: int, total: int, message: str, candidate: Candidate | None = None
    ) -> None:
        """Send a progress event to the callback, if any."""
        if self.callback is not None:
            self.callback(MethodEvent(method, step, total, message, candidate))

    def stopped(self) -> bool:
        """True when the caller asked the method to stop early."""
        return bool(self.should_stop is not None and self.should_stop())


@dataclass
class MethodResult:
    """What every method returns.

    Attributes:
        method: Method name.
        plan: The chosen plan, on budget (within 1% of the MACs budget).
        val_acc: Its val top-1 (%) under the shared scoring protocol.
        macs_ratio: MACs of the plan / MACs of the baseline.
        candidates: Every candidate scored during the run, in order (search methods: one per episode/sample).
        seconds: Wall time of the run.
        n_scored: Number of plans scored (including sensitivity analysis for `sensitivity`).
        options: The validated options the method ran with.
        meta: Method-specific extras (JSON-serialisable).
    """

    method: str
    plan: PruningPlan
    val_acc: float
    macs_ratio: float
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0
    n_scored: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def history(self) -> list[Candidate]:
        """Alias of `candidates` (the contract's name)."""
        return self.candidates

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "method": self.method,
            "plan": self.plan.to_dict(),
            "val_acc": self.val_acc,
            "macs_ratio": self.macs_ratio,
            "candidates": [c.to_dict() for c in self.candidates],
            "seconds": self.seconds,
            "n_scored": self.n_scored,
            "options": dict(self.options),
            "meta": dict(self.meta),
        }


MethodFn = Callable[[MethodContext, dict[str, Any]], MethodResult]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: Registry name (`uniform`, `amc`, ...).
        description: One or two sentences for listings.
        kind: "oneshot" (one plan, `topoprune prune`) or "search" (many scored candidates, `topoprune search`).
        options: Option name -> OptionSpec.
        fn: `fn(ctx, options) -> MethodResult`, called with validated options (one-shot methods).
        searcher: For search methods: an engine.search.SearchMethod subclass, run by the one search driver
            (recording, stepping, resume); `fn` is then unused.
        budget_metrics: Budget metrics the method can land on (`run_method` refuses the others).
    """

    name: str
    description: str
    kind: MethodKind
    options: dict[str, OptionSpec]
    fn: MethodFn | None = None
    searcher: type | None = None
    budget_metrics: tuple[str, ...] = ("macs",)

    def defaults(self) -> dict[str, Any]:
        """Option name -> default value."""
        return {k: o.default for k, o in self.options.items()}

    def validate(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with `options`, each coerced and range-checked.

        Raises:
            MethodError: An option is unknown (the message lists the accepted ones) or invalid.
        """
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            accepted = ", ".join(sorted(self.options)) or "(none)"
            raise MethodError(
                f"method '{self.name}' has no option {', '.join(repr(u) for u in unknown)}; "
                f"accepted options: {accepted}"
            )
        out = self.defaults()
        for key, value in options.items():
            out[key] = self.options[key].coerce(value, method=self.name)
        return out


_REGISTRY: dict[str, MethodSpec] = {}

# Every built-in method's module, in listing order. Each defines SPEC (or SPECS); they are imported on the first
# registry lookup, so engine.methods and engine.rl never import each other at import time, and a module that
# fails to import raises its own error instead of hiding as "unknown method".
METHOD_MODULES: tuple[str, ...] = (
    "engine.methods.uniform",
    "engine.methods.magnitude",
    "engine.methods.sensitivity_guided",
    "engine.methods.fisher",
    "engine.methods.random_search",
    "engine.methods.amc",
    "engine.methods.surp",
    "engine.methods.ga",
    "engine.methods.ajpq",
    "engine.rl.method",
)
_catalog_loaded = False


def _load_catalog() -> None:
    global _catalog_loaded
    if _catalog_loaded:
        return
    import importlib

    specs = []
    for module_name in METHOD_MODULES:
        module = importlib.import_module(module_name)
        specs.extend(getattr(module, "SPECS", None) or (module.SPEC,))
    builtin = {s.name: s for s in specs}
    plugins = {k: v for k, v in _REGISTRY.items() if k not in builtin}
    _REGISTRY.clear()
    _REGISTRY.update(builtin)
    _REGISTRY.update(plugins)
    _catalog_loaded = True


def register_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method to the registry (engine.rl uses this for `gnnrl` and `gnnrl-nognn`).

    Raises:
        ValueError: A method of that name exists and `replace` is False, or `kind` is not oneshot/search.
    """
    if spec.kind not in ("oneshot", "search"):
        raise ValueError(f"method kind must be 'oneshot' or 'search', got {spec.kind!r}")
    if (spec.fn is None) == (spec.searcher is None):
        raise ValueError(f"method '{spec.name}' needs exactly one of fn (one-shot) or searcher (search)")
    _load_catalog()
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"method '{spec.name}' is already registered; pass replace=True to override it")
    for key, opt in spec.options.items():
        if key != opt.name:
            raise ValueError(f"option key {key!r} of method '{spec.name}' differs from its name {opt.name!r}")
    _REGISTRY[spec.name] = spec
    return spec


def list_methods() -> list[MethodSpec]:
    """Every registered method, in registration order (built-in methods first)."""
    _load_catalog()
    return list(_REGISTRY.values())


def get_method(name: str) -> MethodSpec:
    """The method registered under `name`.

    Raises:
        MethodError: Unknown name (the message lists the registered ones).
    """
    _load_catalog()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(
            f"unknown pruning method {name!r}; available methods: {', '.join(_REGISTRY) or '(none)'}"
        ) from None


def run_method(name: str, ctx: MethodContext, **options: Any) -> MethodResult:
    """Run the method `name` on `ctx` with `options` (validated against its OptionSpecs).

    Returns:
        The method's result with `seconds`, `options` and (if the method left it 0) `n_scored` filled in.

    Raises:
        MethodError: Unknown method, invalid option, or a budget metric the method cannot land on.
        BudgetError: The budget is outside (0, 1], its metric is unknown, or it is unreachable.
    """
    spec = get_method(name)
    opts = spec.validate(options)
    budget = ctx.budget_spec
    if budget.metric not in spec.budget_metrics:
        raise MethodError(
            f"method '{name}' cannot land on a {budget.metric!r} budget; it supports "
            f"{', '.join(spec.budget_metrics)}: pick one of those or another method"
        )
    if budget.metric == "latency":  # measured once per architecture and machine, then read from the cache
        from engine.latency_table import ensure_latency_table

        ensure_latency_table(ctx.model, ctx.topology)
    start = time.perf_counter()
    scored_before = ctx.scorer.n_scored if ctx.scorer is not None else 0
    if spec.searcher is not None:
        from engine.search import drive

        result = drive(spec, ctx, opts)
    else:
        result = spec.fn(ctx, opts)
    result.seconds = time.perf_counter() - start
    result.options = opts
    if result.n_scored == 0 and ctx.scorer is not None:
        result.n_scored = ctx.scorer.n_scored - scored_before
    return result
