"""Evaluation library: benchmark items, generation for evaluation, per-item scores, statistics,
best-of-N and the report. The ``evaluate`` pipeline's nodes are thin wrappers around it.
"""
