"""Runs over seeds next to a paper's numbers: the summary rows and table cells the reproduction
experiments (`gan_toy`, `fm_toy`) share.

A published cell is (mean, standard error or None where the source gives none). Ours is the mean and
the standard error over seeds; the two agree when they are at most two combined standard errors apart.
"""
import math

import numpy as np


def mean_and_stderr(values) -> tuple:
    """(mean, standard error of the mean) of a list; the error is 0 for one value."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return float(values.mean()), 0.0
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def summarize(rows, keys, metrics, paper) -> list:
    """One row per value of `keys` (e.g. ('toy', 'variant')) over `rows` (one per run, with 'step'):
    'seeds', the smallest 'step', and for each metric its mean and '_se', and where `paper[key tuple]`
    has it (by the same metric name), '_paper', '_paper_se' and '_agrees'."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, runs in groups.items():
        row = dict(zip(keys, key), seeds=len(runs), step=min(r["step"] for r in runs))
        published = paper.get(key, {})
        for metric in metrics:
            mean, se = mean_and_stderr([r[metric] for r in runs])
            row[metric], row[metric + "_se"] = mean, se
            if metric in published:
                p_mean, p_se = published[metric]
                row[metric + "_paper"], row[metric + "_paper_se"] = p_mean, p_se
                row[metric + "_agrees"] = bool(abs(mean - p_mean) <= 2 * math.hypot(se, p_se or 0.0))
        out.append(row)
    return out


def cell(row, metric, scale=1.0, digits=2) -> str:
    """'mean ± se' of a summary row's metric, then '(paper mean ± se[, differs])' where published."""
    text = f"{scale * row[metric]:.{digits}f} ± {scale * row[metric + '_se']:.{digits}f}"
    if metric + "_paper" in row:
        paper_se = row[metric + "_paper_se"]
        text += (f" ({scale * row[metric + '_paper']:.{digits}f}"
                 f"{'' if paper_se is None else f' ± {scale * paper_se:.{digits}f}'}"
                 f"{'' if row[metric + '_agrees'] else ', differs'})")
    return text


AGREEMENT_NOTE = ("Mean ± standard error over seeds (the paper's in brackets; 'differs': further apart than "
                  "two combined standard errors):")
