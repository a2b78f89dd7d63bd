"""Evaluation: metrics, baselines, benchmarks, logit lens, plots."""
