"""Ranking metrics for a Q-function, computed per state (numpy only).

A planner only uses Q to rank the proposals of ONE state, so the metrics group predictions by
state id (episode, goal index) and ask, per state:
  * Spearman rank correlation between predicted Q and MCTS Q (average ranks for ties);
  * top-1 agreement: does the proposal with the highest predicted Q have the best MCTS Q?
States with a single proposal or a constant MCTS Q carry no ranking signal and are skipped.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def group_ids(*keys: np.ndarray) -> np.ndarray:
    """Integer state id per row from parallel key columns (e.g. episode, goal)."""
    stacked = np.stack([np.asarray(k).reshape(-1) for k in keys], axis=1)
    _, ids = np.unique(stacked, axis=0, return_inverse=True)
    return ids.reshape(-1)


def spearman(pred: np.ndarray, target: np.ndarray) -> float:
    """Spearman rho of two 1-D arrays; NaN when target is constant, 0 when only pred is."""
    rp, rt = rankdata(pred), rankdata(target)
    rp, rt = rp - rp.mean(), rt - rt.mean()
    denom_t = float(np.sqrt((rt * rt).sum()))
    if denom_t == 0.0:
        return float("nan")
    denom_p = float(np.sqrt((rp * rp).sum()))
    if denom_p == 0.0:
        return 0.0
    return float((rp * rt).sum() / (denom_p * denom_t))


def ranking_metrics(pred: np.ndarray, target: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Mean per-state Spearman, top-1 agreement and the number of rankable states.

    pred, target, groups: (N,). Top-1 counts a hit when the predicted best proposal's MCTS Q
    equals the best MCTS Q of that state (ties in MCTS Q all count as best).
    """
    pred, target = (
        np.asarray(pred, np.float64).reshape(-1),
        np.asarray(target, np.float64).reshape(-1),
    )
    groups = np.asarray(groups).reshape(-1)
    rhos, hits = [], []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        if idx.size < 2 or np.ptp(target[idx]) == 0.0:
            continue
        rhos.append(spearman(pred[idx], target[idx]))
        best = target[idx].max()
        hits.append(float(target[idx][np.argmax(pred[idx])] == best))
    if not rhos:
        return {"spearman": float("nan"), "top1": float("nan"), "states": 0.0}
    return {
        "spearman": float(np.mean(rhos)),
        "top1": float(np.mean(hits)),
        "states": float(len(rhos)),
    }
