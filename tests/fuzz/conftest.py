"""Hypothesis profiles for the fuzz tests: ``ci`` (the default, about a minute in all) and
``long`` (``EVENTGATE_FUZZ=long``: millions of cases over hours, run by hand).

The profiles are registered here but not loaded globally, so the rest of the suite keeps its own
settings: each fuzz test takes :func:`fuzz_settings` with its CI budget.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

__all__ = ["LONG", "PROFILE", "fuzz_settings"]

PROFILE = "long" if os.environ.get("EVENTGATE_FUZZ", "ci") == "long" else "ci"
LONG = PROFILE == "long"

# No deadline and no "too slow" health check in CI: no test may depend on timing, and the CI
# machine is shared. Derandomized, so CI runs the same cases every time (the long mode explores).
settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# The long mode reports a case slower than 10 s (a hang in the making) and keeps what it finds
# in .hypothesis/ so a rerun starts from it.
settings.register_profile(
    "long",
    max_examples=5_000_000,
    deadline=10_000,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    report_multiple_bugs=True,
)


def fuzz_settings(ci_examples: int, long_examples: int | None = None) -> settings:
    """The active profile, with ``ci_examples`` cases in CI (or ``long_examples`` in the long
    mode, default the profile's millions; ``EVENTGATE_FUZZ_EXAMPLES`` overrides both)."""
    if LONG:
        profile = settings.get_profile("long")
        override = os.environ.get("EVENTGATE_FUZZ_EXAMPLES")
        examples = int(override) if override else long_examples or profile.max_examples
        return settings(profile, max_examples=examples)
    return settings(settings.get_profile("ci"), max_examples=ci_examples)
