"""Applying a model and measuring it: `inference` (every frame once on 1..N processes), `registry` (the
metric names), `metrics` (point estimates), `aggregation` (frames → persons), `bootstrap` (person-level
CIs) and `evaluator` (the evaluation of a split: metrics.json, tables and figures)."""
