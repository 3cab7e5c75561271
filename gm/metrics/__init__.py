"""Evaluation: likelihood in nats and bits/dim (sample-quality metrics join here)."""
from gm.metrics.likelihood import evaluate_log_prob
