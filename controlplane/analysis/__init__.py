"""Rollout analysis: Envoy's MetricsService push → per-version windows → verdicts.

    receiver (raw StreamMetricsMessage bytes) → window (one-second slots per cluster)
    → decide.evaluate(analysis, counts) → Check (passed | failed | inconclusive)

Everything here but the receiver's gRPC handler is pure (time comes in as `now`).
"""

from controlplane.analysis.decide import (
    FAILED,
    INCONCLUSIVE,
    PASSED,
    Check,
    evaluate,
    judge,
    version_cluster,
)
from controlplane.analysis.window import Counts, Slots, Window

__all__ = ["FAILED", "INCONCLUSIVE", "PASSED", "Check", "Counts", "Slots", "Window",
           "evaluate", "judge", "version_cluster"]
