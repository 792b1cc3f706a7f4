"""Slow references for the miners: Python loops over anchors, pairs and triplets on float64
dissimilarities (smaller = closer), written from the papers' definitions. They never call
pytorch-metric-learning nor the code under test. Each returns a set of index tuples.
"""

from __future__ import annotations

import math

import numpy as np


def dissimilarity(embeddings, distance="euclidean"):
    """[B][B] Python floats: Euclidean / squared Euclidean distance or negated cosine
    similarity of the L2-normalised embeddings."""
    x = embeddings.detach().cpu().double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    d = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if distance == "cosine":
                d[i][j] = -float(sum(a * b for a, b in zip(x[i], x[j])))
            else:
                squared = float(sum((a - b) ** 2 for a, b in zip(x[i], x[j])))
                d[i][j] = squared if distance == "squared_euclidean" else math.sqrt(squared)
    return d


def _groups(labels):
    y = [int(v) for v in labels]
    n = len(y)
    positives = {a: [p for p in range(n) if p != a and y[p] == y[a]] for a in range(n)}
    negatives = {a: [k for k in range(n) if y[k] != y[a]] for a in range(n)}
    return n, positives, negatives


def batch_all(d, labels, margin=None):
    n, positives, negatives = _groups(labels)
    return {
        (a, p, k)
        for a in range(n) for p in positives[a] for k in negatives[a]
        if margin is None or d[a][k] - d[a][p] <= margin
    }


def batch_hard(d, labels):
    n, positives, negatives = _groups(labels)
    triplets = set()
    for a in range(n):
        if positives[a] and negatives[a]:
            p = max(positives[a], key=lambda j: d[a][j])
            k = min(negatives[a], key=lambda j: d[a][j])
            triplets.add((a, p, k))
    return triplets


def semi_hard(d, labels):
    n, positives, negatives = _groups(labels)
    triplets = set()
    for a in range(n):
        if not negatives[a]:
            continue
        for p in positives[a]:
            farther = [k for k in negatives[a] if d[a][k] > d[a][p]]
            if farther:
                k = min(farther, key=lambda j: d[a][j])
            else:
                k = max(negatives[a], key=lambda j: d[a][j])
            triplets.add((a, p, k))
    return triplets


def multi_similarity(d, labels, epsilon=0.1):
    """(positive pairs, negative pairs) kept by Wang et al.'s rule, written on similarities
    s = -d: a negative (i, k) if s_ik + ε > min_j s_ij, a positive (i, j) if s_ij - ε < max_k s_ik."""
    n, positives, negatives = _groups(labels)
    kept_positive, kept_negative = set(), set()
    for i in range(n):
        least_similar_positive = min((-d[i][j] for j in positives[i]), default=math.inf)
        most_similar_negative = max((-d[i][k] for k in negatives[i]), default=-math.inf)
        kept_negative |= {(i, k) for k in negatives[i] if -d[i][k] + epsilon > least_similar_positive}
        kept_positive |= {(i, j) for j in positives[i] if -d[i][j] - epsilon < most_similar_negative}
    return kept_positive, kept_negative


def pairs_of(mined):
    """Distinct (positive pairs, negative pairs) of a triplet set or of a (pos, neg) pair."""
    if isinstance(mined, tuple):
        return set(mined[0]), set(mined[1])
    return {(a, p) for a, p, _ in mined}, {(a, k) for a, _, k in mined}


def triplets_of(mined):
    """Triplets of a triplet set, or of pairs: every (a, p, k) whose two pairs share anchor a."""
    if not isinstance(mined, tuple):
        return set(mined)
    positive, negative = mined
    return {(a, p, k) for a, p in positive for b, k in negative if a == b}
