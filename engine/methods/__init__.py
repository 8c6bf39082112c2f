"""Every pruning method behind one registry: uniform, magnitude, sensitivity, fisher, random, amc, gnnrl, ...

`run_method(name, MethodContext(...), **options)` validates options and returns a MethodResult whose plan is
within 1% of the budget. Methods never modify the baseline and never read the test split. The built-in
methods are listed in `registry.METHOD_MODULES` and imported on the first lookup; search methods run through
the one search driver (engine.search).
"""

from engine.methods.registry import (
    METHOD_MODULES,
    Candidate,
    MethodContext,
    MethodError,
    MethodEvent,
    MethodResult,
    MethodSpec,
    OptionSpec,
    get_method,
    list_methods,
    register_method,
    run_method,
)


def amc_state_features(*args, **kwargs):
    """AMC's 10 hand-made per-group features (engine.methods.amc.amc_state_features)."""
    from engine.methods.amc import amc_state_features as features

    return features(*args, **kwargs)


__all__ = [
    "METHOD_MODULES",
    "Candidate",
    "MethodContext",
    "MethodError",
    "MethodEvent",
    "MethodResult",
    "MethodSpec",
    "OptionSpec",
    "amc_state_features",
    "get_method",
    "list_methods",
    "register_method",
    "run_method",
]
