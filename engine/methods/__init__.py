"""Every pruning method behind one registry: uniform, magnitude, sensitivity, fisher, random, amc (+ engine.rl's).

`run_method(name, MethodContext(...), **options)` validates options and returns a MethodResult whose plan is
within 1% of the MACs budget. Methods never modify the baseline and never read the test split.
"""

from engine.methods import amc, fisher, magnitude, random_search, sensitivity_guided, uniform
from engine.methods.amc import amc_state_features
from engine.methods.registry import (
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

for _module in (uniform, magnitude, sensitivity_guided, fisher, random_search, amc):
    if _module.SPEC.name not in {m.name for m in list_methods()}:
        register_method(_module.SPEC)

__all__ = [
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

try:  # engine.rl registers gnnrl and gnnrl-nognn through register_method
    import engine.rl.method  # noqa: F401
except ImportError:
    pass
