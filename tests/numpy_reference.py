"""An independent NumPy implementation of one VBPR/AMR training step (the original's semantics).

Written from the formulas, with hand-derived gradients and dense TF1-style Adagrad, so that the
Keras models are checked against something that shares none of their code.
"""

import numpy as np


def softplus(x):
    return np.logaddexp(0.0, x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def feature_gradient(P, Q, E, C, u, i, j):
    """Gradient of the clean BPR sum w.r.t. the features C (dense items x F)."""
    p = P[u]
    x = np.sum(p * ((Q[i] + C[i] @ E) - (Q[j] + C[j] @ E)), axis=1)
    a = -sigmoid(-x)  # dL/dx
    g = np.zeros_like(C)
    np.add.at(g, i, (a[:, None] * p) @ E.T)
    np.add.at(g, j, (-a[:, None] * p) @ E.T)
    return g


def adversary(P, Q, E, C, u, i, j, eps):
    """Dense items x F perturbation: row-normalised gradient of the clean BPR sum w.r.t. C."""
    g = feature_gradient(P, Q, E, C, u, i, j)
    norm = np.sqrt(np.maximum(np.sum(g * g, axis=1, keepdims=True), 1e-12))
    return eps * g / norm


def losses(P, Q, E, C, u, i, j, regs, eps=0.0, lmd=0.0, delta=None):
    """(objective, clean BPR sum, adversarial BPR sum)."""
    p = P[u]
    vi, vj = Q[i] + C[i] @ E, Q[j] + C[j] @ E
    bpr = softplus(-np.sum(p * (vi - vj), axis=1)).sum()
    r1, r2, r3 = regs
    reg = r1 * np.sum(p * p) + r2 * (np.sum(vi * vi) + np.sum(vj * vj)) + r3 * np.sum(E * E)
    adv = 0.0
    if lmd:
        if delta is None:
            delta = adversary(P, Q, E, C, u, i, j, eps)
        Ca = C + delta
        adv = softplus(-np.sum(p * ((Q[i] + Ca[i] @ E) - (Q[j] + Ca[j] @ E)), axis=1)).sum()
    return bpr + lmd * adv + reg, bpr, adv


def gradients(P, Q, E, C, u, i, j, regs, eps=0.0, lmd=0.0, delta=None):
    """Gradients of the objective w.r.t. P, Q, E with the adversary held constant."""
    r1, r2, r3 = regs
    p = P[u]
    vi, vj = Q[i] + C[i] @ E, Q[j] + C[j] @ E
    a = -sigmoid(-np.sum(p * (vi - vj), axis=1))[:, None]
    gP, gQ = np.zeros_like(P), np.zeros_like(Q)
    np.add.at(gP, u, a * (vi - vj) + 2 * r1 * p)
    np.add.at(gQ, i, a * p + 2 * r2 * vi)
    np.add.at(gQ, j, -a * p + 2 * r2 * vj)
    gE = C[i].T @ (a * p + 2 * r2 * vi) + C[j].T @ (-a * p + 2 * r2 * vj) + 2 * r3 * E
    if lmd:
        if delta is None:
            delta = adversary(P, Q, E, C, u, i, j, eps)
        Ca = C + delta
        vai, vaj = Q[i] + Ca[i] @ E, Q[j] + Ca[j] @ E
        b = -lmd * sigmoid(-np.sum(p * (vai - vaj), axis=1))[:, None]
        np.add.at(gP, u, b * (vai - vaj))
        np.add.at(gQ, i, b * p)
        np.add.at(gQ, j, -b * p)
        gE += Ca[i].T @ (b * p) + Ca[j].T @ (-b * p)
    return gP, gQ, gE


def adagrad_step(params, grads, accums, lrs):
    """TF1 Adagrad: accum += g^2; w -= lr g / sqrt(accum) (a zero gradient row leaves w unchanged)."""
    out_p, out_a = [], []
    for w, g, acc, lr in zip(params, grads, accums, lrs):
        acc = acc + g * g
        out_p.append(w - lr * g / np.sqrt(acc))
        out_a.append(acc)
    return out_p, out_a


def train_step(P, Q, E, C, u, i, j, regs, lrs, eps=0.0, lmd=0.0, accums=None):
    """One step from float64 copies; returns new (P, Q, E), accumulators and the loss terms."""
    P, Q, E, C = (np.asarray(a, np.float64) for a in (P, Q, E, C))
    if accums is None:
        accums = [np.full_like(w, 0.1) for w in (P, Q, E)]
    delta = adversary(P, Q, E, C, u, i, j, eps) if lmd else None
    terms = losses(P, Q, E, C, u, i, j, regs, eps, lmd, delta)
    grads = gradients(P, Q, E, C, u, i, j, regs, eps, lmd, delta)
    params, accums = adagrad_step((P, Q, E), grads, accums, lrs)
    return params, accums, terms
