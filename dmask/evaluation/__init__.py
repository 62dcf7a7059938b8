"""Evaluation: metrics, baselines, comparisons, tuning."""
