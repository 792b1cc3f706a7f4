"""Slow references for the loss tests, written from the papers' definitions with explicit Python
loops over anchors, pairs and triplets (float64, plain math on Python floats where possible).
They never call pytorch-metric-learning nor the code under test.

All take numpy/torch inputs and return a Python float.
"""

from __future__ import annotations

import math

import numpy as np


def as_numpy(x):
    return x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=float)


def normalise(x):
    x = as_numpy(x)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dist(u, v, squared=False):
    d2 = float(sum((a - b) ** 2 for a, b in zip(u, v)))
    return d2 if squared else math.sqrt(d2)


def dot(u, v):
    return float(sum(a * b for a, b in zip(u, v)))


def cosine(u, v):
    return dot(u, v) / math.sqrt(dot(u, u) * dot(v, v))


def log_sum_exp(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def mean_nonzero(values):
    nonzero = [v for v in values if v > 0]
    return sum(nonzero) / len(nonzero) if nonzero else 0.0


# --- triplet ----------------------------------------------------------------------------
def triplet(embeddings, labels, margin=0.2, mining="semi_hard", soft_margin=False, squared=True):
    x, y = normalise(embeddings), [int(v) for v in labels]
    n = len(y)
    d = [[dist(x[i], x[j], squared) for j in range(n)] for i in range(n)]

    def term(d_ap, d_an):
        return softplus(d_ap - d_an) if soft_margin else max(0.0, d_ap - d_an + margin)

    positives = {a: [p for p in range(n) if p != a and y[p] == y[a]] for a in range(n)}
    negatives = {a: [k for k in range(n) if y[k] != y[a]] for a in range(n)}
    if mining == "batch_all":
        terms = [term(d[a][p], d[a][k]) for a in range(n) for p in positives[a] for k in negatives[a]]
        return mean_nonzero(terms)
    terms = []
    for a in range(n):
        if not positives[a] or not negatives[a]:
            continue
        if mining == "batch_hard":
            terms.append(term(max(d[a][p] for p in positives[a]), min(d[a][k] for k in negatives[a])))
        else:  # semi_hard, as TensorFlow's triplet_semihard_loss
            for p in positives[a]:
                farther = [d[a][k] for k in negatives[a] if d[a][k] > d[a][p]]
                d_an = min(farther) if farther else max(d[a][k] for k in negatives[a])
                terms.append(term(d[a][p], d_an))
    return sum(terms) / len(terms) if terms else 0.0


# --- pair losses ------------------------------------------------------------------------
def contrastive(embeddings, labels, pos_margin=0.0, neg_margin=1.0):
    x, y = normalise(embeddings), [int(v) for v in labels]
    pos, neg = [], []
    for i in range(len(y)):
        for j in range(len(y)):
            if i == j:
                continue
            d = dist(x[i], x[j])
            if y[i] == y[j]:
                pos.append(max(0.0, d - pos_margin))
            else:
                neg.append(max(0.0, neg_margin - d))
    return mean_nonzero(pos) + mean_nonzero(neg)


def lifted(embeddings, labels, margin=1.0):
    x, y = normalise(embeddings), [int(v) for v in labels]
    n = len(y)
    total, num_pairs = 0.0, 0
    for i in range(n):
        for j in range(i + 1, n):
            if y[i] != y[j]:
                continue
            num_pairs += 1
            exps = [math.exp(margin - dist(x[i], x[k])) for k in range(n) if y[k] != y[i]]
            exps += [math.exp(margin - dist(x[j], x[m])) for m in range(n) if y[m] != y[j]]
            J = math.log(sum(exps)) + dist(x[i], x[j])
            total += max(0.0, J) ** 2
    return total / (2 * num_pairs) if num_pairs else 0.0


def multi_similarity(embeddings, labels, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1):
    x, y = normalise(embeddings), [int(v) for v in labels]
    n = len(y)
    total = 0.0
    for i in range(n):
        s_pos = [dot(x[i], x[j]) for j in range(n) if j != i and y[j] == y[i]]
        s_neg = [dot(x[i], x[k]) for k in range(n) if y[k] != y[i]]
        if epsilon is not None:
            hardest_pos = min(s_pos) if s_pos else math.inf
            hardest_neg = max(s_neg) if s_neg else -math.inf
            kept_neg = [s for s in s_neg if s + epsilon > hardest_pos]
            kept_pos = [s for s in s_pos if s - epsilon < hardest_neg]
        else:
            kept_pos, kept_neg = s_pos, s_neg
        if kept_pos:
            total += math.log(1 + sum(math.exp(-alpha * (s - base)) for s in kept_pos)) / alpha
        if kept_neg:
            total += math.log(1 + sum(math.exp(beta * (s - base)) for s in kept_neg)) / beta
    return total / n


def npair(embeddings, labels, l2_reg=0.002):
    f, y = as_numpy(embeddings), [int(v) for v in labels]
    anchors, positives = [], []
    for c in sorted(set(y)):
        members = [i for i in range(len(y)) if y[i] == c]
        if len(members) >= 2:
            anchors.append(f[members[0]])
            positives.append(f[members[1]])
    n = len(anchors)
    if n == 0:
        return 0.0
    total = 0.0
    for i in range(n):
        own = dot(anchors[i], positives[i])
        total += math.log(1 + sum(math.exp(dot(anchors[i], positives[j]) - own) for j in range(n) if j != i))
    penalty = sum(dot(a, a) for a in anchors) / n + sum(dot(p, p) for p in positives) / n
    return total / n + 0.25 * l2_reg * penalty


# --- proxy losses -----------------------------------------------------------------------
def proxy_nca(embeddings, labels, proxies, scale=9.0):
    x, p, y = normalise(embeddings), normalise(proxies), [int(v) for v in labels]
    total = 0.0
    for i in range(len(y)):
        logits = [-scale * dist(x[i], p[c], squared=True) for c in range(len(p))]
        total += log_sum_exp(logits) - logits[y[i]]
    return total / len(y)


def proxy_anchor(embeddings, labels, proxies, alpha=32.0, margin=0.1):
    x, y = as_numpy(embeddings), [int(v) for v in labels]
    p = as_numpy(proxies)
    classes = range(len(p))
    with_positives = [c for c in classes if c in y]
    pos = sum(
        math.log(1 + sum(math.exp(-alpha * (cosine(x[i], p[c]) - margin)) for i in range(len(y)) if y[i] == c))
        for c in with_positives
    )
    neg = sum(
        math.log(1 + sum(math.exp(alpha * (cosine(x[i], p[c]) + margin)) for i in range(len(y)) if y[i] != c))
        for c in classes
    )
    return pos / len(with_positives) + neg / len(p)


def soft_triple(embeddings, labels, centers, num_classes, centers_per_class, la=20.0, gamma=0.1, margin=0.01, tau=0.2):
    """``centers`` [D, C*K], column c*K + k is centre k of class c."""
    x, y = normalise(embeddings), [int(v) for v in labels]
    w = normalise(as_numpy(centers).T)                         # [C*K, D]
    K = centers_per_class
    total = 0.0
    for i in range(len(y)):
        logits = []
        for c in range(num_classes):
            sims = [dot(x[i], w[c * K + k]) for k in range(K)]
            weights = [math.exp(s / gamma) for s in sims]
            relaxed = sum(wt * s for wt, s in zip(weights, sims)) / sum(weights)
            logits.append(la * (relaxed - (margin if c == y[i] else 0.0)))
        total += log_sum_exp(logits) - logits[y[i]]
    loss = total / len(y)
    if tau > 0 and K > 1:
        reg = 0.0
        for c in range(num_classes):
            for k in range(K):
                for k2 in range(k + 1, K):
                    reg += math.sqrt(max(0.0, 2.0 - 2.0 * dot(w[c * K + k], w[c * K + k2])))
        loss += tau * reg / (num_classes * K * (K - 1))
    return loss


# --- classifier losses ------------------------------------------------------------------
def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    z, y = as_numpy(logits), [int(v) for v in labels]
    total = 0.0
    for i in range(len(y)):
        lse = log_sum_exp(list(z[i]))
        nll = lse - z[i][y[i]]
        smooth = sum(lse - v for v in z[i]) / len(z[i])
        total += (1 - label_smoothing) * nll + label_smoothing * smooth
    return total / len(y)


def linear_logits(embeddings, weight, bias):
    x, w, b = as_numpy(embeddings), as_numpy(weight), as_numpy(bias)
    return np.array([[dot(x[i], w[c]) + b[c] for c in range(len(w))] for i in range(len(x))])


def cosine_logits(embeddings, weight, scale):
    x, w = as_numpy(embeddings), as_numpy(weight)
    return np.array([[scale * cosine(x[i], w[c]) for c in range(len(w))] for i in range(len(x))])


# --- ranking / continuous ---------------------------------------------------------------
def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def smooth_ap(embeddings, labels, tau=0.01):
    x, y = normalise(embeddings), [int(v) for v in labels]
    n = len(y)
    aps = []
    for q in range(n):
        s = [dot(x[q], x[j]) for j in range(n)]
        others = [j for j in range(n) if j != q]
        positives = [j for j in others if y[j] == y[q]]
        if not positives:
            continue
        precision = 0.0
        for i in positives:
            rank_all = 1 + sum(sigmoid((s[j] - s[i]) / tau) for j in others if j != i)
            rank_pos = 1 + sum(sigmoid((s[j] - s[i]) / tau) for j in positives if j != i)
            precision += rank_pos / rank_all
        aps.append(precision / len(positives))
    return 1.0 - sum(aps) / len(aps)


def log_ratio(embeddings, labels, eps=1e-6):
    f = as_numpy(embeddings)
    y = as_numpy(labels).reshape(len(f), -1)
    n = len(f)
    total, count = 0.0, 0
    for a in range(n):
        for i in range(n):
            for j in range(n):
                if len({a, i, j}) < 3:
                    continue
                embedding_term = math.log(dist(f[a], f[i], squared=True) + eps) - math.log(dist(f[a], f[j], squared=True) + eps)
                # The paper's Dy is the squared Euclidean distance, like D.
                label_term = math.log(dist(y[a], y[i], squared=True) + eps) - math.log(dist(y[a], y[j], squared=True) + eps)
                total += (embedding_term - label_term) ** 2
                count += 1
    return total / count


# --- pair and triplet losses over given (mined) pairs or triplets --------------------------
# ``triplets``: a set of (a, p, n); ``positive``/``negative``: sets of ordered pairs (i, j).
def triplet_over(embeddings, triplets, margin=0.2, soft_margin=False, squared=True, reduction="mean"):
    x = normalise(embeddings)
    terms = []
    for a, p, k in sorted(triplets):
        gap = dist(x[a], x[p], squared) - dist(x[a], x[k], squared)
        terms.append(softplus(gap) if soft_margin else max(0.0, gap + margin))
    if not terms:
        return 0.0
    return mean_nonzero(terms) if reduction == "mean_nonzero" else sum(terms) / len(terms)


def contrastive_over(embeddings, positive, negative, pos_margin=0.0, neg_margin=1.0):
    x = normalise(embeddings)
    pos = [max(0.0, dist(x[i], x[j]) - pos_margin) for i, j in positive]
    neg = [max(0.0, neg_margin - dist(x[i], x[j])) for i, j in negative]
    return mean_nonzero(pos) + mean_nonzero(neg)


def lifted_over(embeddings, positive, negative, margin=1.0):
    """Eq. 4 over the given ordered positive pairs, N(i) = {k : (i, k) given}; a pair with no
    negative on either side has no J and is left out."""
    x = normalise(embeddings)
    total, count = 0.0, 0
    for i, j in sorted(positive):
        exps = [math.exp(margin - dist(x[i], x[k])) for a, k in negative if a == i]
        exps += [math.exp(margin - dist(x[j], x[m])) for b, m in negative if b == j]
        if not exps:
            continue
        J = math.log(sum(exps)) + dist(x[i], x[j])
        total += max(0.0, J) ** 2
        count += 1
    return total / (2 * count) if count else 0.0


def multi_similarity_over(embeddings, positive, negative, alpha=2.0, beta=50.0, base=0.5):
    x = normalise(embeddings)
    n = len(x)
    total = 0.0
    for i in range(n):
        s_pos = [dot(x[i], x[j]) for a, j in positive if a == i]
        s_neg = [dot(x[i], x[k]) for a, k in negative if a == i]
        if s_pos:
            total += math.log(1 + sum(math.exp(-alpha * (s - base)) for s in s_pos)) / alpha
        if s_neg:
            total += math.log(1 + sum(math.exp(beta * (s - base)) for s in s_neg)) / beta
    return total / n
