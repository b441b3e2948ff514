"""Shared fixtures: hypothesis profiles and the parity report printed after the run."""

from __future__ import annotations

import os
from collections import defaultdict

from hypothesis import HealthCheck, settings

# CI is derandomized so a run is reproducible; "dev"/"thorough" explore new examples.
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# (family, mode, format) -> [max abs diff, number of images compared]
PARITY: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0])


def record_parity(family: str, mode: str, fmt: str, diff: float) -> None:
    row = PARITY[(family, mode, fmt)]
    row[0] = max(row[0], float(diff))
    row[1] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if not PARITY:
        return
    tr = terminalreporter
    tr.section("preprocessing parity vs reference (max abs diff over all generated images)")
    tr.write_line(f"| {'family':<14} | {'mode':<6} | {'format':<10} | {'images':>6} | {'max abs diff':>12} |")
    tr.write_line(f"|{'-' * 16}|{'-' * 8}|{'-' * 12}|{'-' * 8}|{'-' * 14}|")
    for (family, mode, fmt), (diff, n) in sorted(PARITY.items()):
        tr.write_line(f"| {family:<14} | {mode:<6} | {fmt:<10} | {n:>6} | {diff:>12.3g} |")
