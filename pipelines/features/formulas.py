"""Feature definitions shared by training rows and serving rows: the constants and small formulas both
sides must compute identically (:mod:`serve.features` imports this module, not the stage)."""

from __future__ import annotations

WEEK = 7 * 86400


AGE_BUCKETS = (18, 25, 35, 45, 55, 65)
