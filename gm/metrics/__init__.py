"""Evaluation: likelihood in nats and bits/dim, reconstruction error, and sample-quality statistics
(FID, KID, IS)."""
from gm.metrics.fid import StreamingMoments, frechet_distance, kernel_inception_distance, load_stats, save_stats
from gm.metrics.inception_score import inception_score
from gm.metrics.likelihood import evaluate_log_prob
from gm.metrics.reconstruction import evaluate_reconstruction
