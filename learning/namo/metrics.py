"""Ranking metrics for a Q-function, computed per state (numpy only).

A planner only uses Q to rank the proposals of ONE state, so the metrics group predictions by
state id (episode, goal index) and ask, per state:
  * Spearman rank correlation between predicted Q and MCTS Q (average ranks for ties);
  * top-1 agreement: does the proposal with the highest predicted Q have the best MCTS Q?
  * pair accuracy: of the proposal pairs whose MCTS Q differ, the fraction the prediction
    orders the same way (a predicted tie counts half). MCTS Q is tie-heavy (every move from
    which no simulation reached the goal scores exactly 0), and a continuous prediction breaks
    those ties at random, which caps its Spearman below 1 even when it orders every pair MCTS
    tells apart; pair accuracy leaves the tied pairs out.
States with a single proposal or a constant MCTS Q carry no ranking signal and are skipped;
`tied_best` is the fraction of the rest whose best MCTS Q is shared (top-1 then accepts any of
them) and `zero_q` the fraction of their proposals at exactly Q = 0.
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
    rhos, hits, pairs, tied, zeros = [], [], [], [], []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        t, p = target[idx], pred[idx]
        if idx.size < 2 or np.ptp(t) == 0.0:
            continue
        rhos.append(spearman(p, t))
        best = t.max()
        hits.append(float(t[np.argmax(p)] == best))
        pairs.append(pair_accuracy(p, t))
        tied.append(float((t == best).sum() > 1))
        zeros.append(float((t == 0.0).mean()))
    if not rhos:
        nan = float("nan")
        return {"spearman": nan, "top1": nan, "pair_acc": nan, "states": 0.0}
    return {
        "spearman": float(np.mean(rhos)),
        "top1": float(np.mean(hits)),
        "pair_acc": float(np.mean(pairs)),
        "states": float(len(rhos)),
        "tied_best": float(np.mean(tied)),
        "zero_q": float(np.mean(zeros)),
    }


def pair_accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Fraction of pairs with different targets that pred orders alike (pred ties: half)."""
    dt = np.sign(target[:, None] - target[None, :])
    dp = np.sign(pred[:, None] - pred[None, :])
    told = dt > 0  # each pair with different targets once, from its higher side
    return float(((dp[told] > 0) + 0.5 * (dp[told] == 0)).mean())
