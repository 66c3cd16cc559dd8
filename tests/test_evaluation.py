"""Metrics on hand-computed ranks (ties included) and the vectorised evaluation against a loop."""

import math

import numpy as np
import pytest

from amr_tf.data import AmrDataset
from amr_tf.evaluation import evaluate, hit_ratio, metrics_from_ranks, ndcg, rank_test_items


class FixedScores:
    """A 'model' with given user and item vectors (the evaluation's whole interface)."""

    def __init__(self, users, items):
        self.u, self.i = np.asarray(users, np.float32), np.asarray(items, np.float32)

    def user_vectors(self):
        return self.u

    def item_vectors(self, features=None):
        return self.i if features is None else np.asarray(features, np.float32)


def one_dim_dataset(item_scores, candidates, train_pairs=((0, 0),)):
    n = len(item_scores)
    return AmrDataset(
        num_users=len(candidates), num_items=n, features=np.zeros((n, 1), np.float32),
        train_pairs=np.array(train_pairs), test_candidates=np.array(candidates),
    )


def test_hand_computed_ranks_with_ties():
    # Item scores (one user, 1-d vectors): item 0 -> 5, 1 -> 7, 2 -> 5, 3 -> 1, 4 -> 9.
    scores = [5, 7, 5, 1, 9]
    ds = one_dim_dataset(scores, [[0, 1, 2, 3, 4]])
    model = FixedScores([[1.0]], np.array(scores)[:, None])
    # Positive 0 scores 5; competitors 7, 5 (a tie counts against it), 1, 9 -> rank 3.
    assert rank_test_items(model, ds).tolist() == [3]
    m = evaluate(model, ds, ks=(3, 5))
    assert m["HR@3"] == 0.0 and m["NDCG@3"] == 0.0
    assert m["HR@5"] == 1.0 and m["NDCG@5"] == pytest.approx(math.log(2) / math.log(5))


def test_metrics_from_ranks():
    ranks = [0, 1, 4, 9, 30]
    m = metrics_from_ranks(ranks, ks=(1, 5, 10))
    assert m["HR@1"] == pytest.approx(0.2) and m["NDCG@1"] == pytest.approx(0.2)
    assert m["HR@5"] == pytest.approx(0.6)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)
    assert m["HR@10"] == pytest.approx(0.8)
    assert list(m) == ["HR@1", "NDCG@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10"]
    assert hit_ratio([10], 10) == 0.0 and ndcg([9], 10) == pytest.approx(1 / math.log2(11))


def test_full_ranking_masks_training_items():
    scores = [5, 7, 5, 1, 9, 6]
    # User 0 trained on items 4 and 1 (the two best); test positive 0.
    ds = one_dim_dataset(scores, [[0, 3]], train_pairs=((0, 4), (0, 1)))
    model = FixedScores([[1.0]], np.array(scores)[:, None])
    # Competing untrained items: 2 (5, tie), 3 (1), 5 (6) -> rank 2.
    assert rank_test_items(model, ds, protocol="full").tolist() == [2]
    assert rank_test_items(model, ds, protocol="sampled").tolist() == [0]


def test_vectorised_matches_per_user_loop(tiny_dataset, rng):
    ds = tiny_dataset
    model = FixedScores(rng.normal(size=(ds.num_users, 4)), rng.normal(size=(ds.num_items, 4)))
    want = []
    for u, row in enumerate(ds.test_candidates):  # the original's loop, one user at a time
        s = model.i[row] @ model.u[u]
        want.append(int(np.sum(s[1:] >= s[0])))
    got = rank_test_items(model, ds, max_chunk_entries=7 * ds.num_items)  # several chunks
    assert got.tolist() == want
    full = rank_test_items(model, ds, protocol="full", max_chunk_entries=5 * ds.num_items)
    train = ds.train_matrix.toarray() > 0
    for u in range(ds.num_users):
        s = model.i @ model.u[u]
        pos = ds.test_candidates[u, 0]
        others = ~train[u]
        others[pos] = False
        assert full[u] == int(np.sum(s[others] >= s[pos]))


def test_features_override_changes_scores(tiny_dataset):
    from amr_tf.models import VBPR

    ds = tiny_dataset
    model = VBPR(ds.num_users, ds.num_items, ds.features, embed_dim=4, seed=0)
    base = evaluate(model, ds)
    assert evaluate(model, ds, features=ds.features) == base
    noisy = ds.features + np.random.default_rng(0).normal(scale=5.0, size=ds.features.shape).astype(np.float32)
    assert rank_test_items(model, ds, features=noisy).tolist() != rank_test_items(model, ds).tolist()


def test_sampled_evaluation_by_gathering_candidates_equals_scoring_all_items():
    """Large catalogues gather the candidates' vectors instead of scoring every item: same ranks."""
    from amr_tf.evaluation import _GATHER_RATIO

    rng = np.random.default_rng(0)
    users, items, n = 37, 2000, 11
    assert items > _GATHER_RATIO * n  # the gather path is taken
    cands = np.stack([rng.choice(items, n, replace=False) for _ in range(users)])
    ds = AmrDataset(num_users=users, num_items=items, features=np.zeros((items, 1), np.float32),
                    train_pairs=np.array([[0, 0]]), test_candidates=cands)

    class Fixed:
        u = rng.normal(size=(users, 6)).astype(np.float32)
        i = rng.normal(size=(items, 6)).astype(np.float32)

        def user_vectors(self):
            return self.u

        def item_vectors(self, features=None):
            return self.i

    model = Fixed()
    want = [int(np.sum(s[1:] >= s[0])) for s in (model.i[c] @ model.u[k] for k, c in enumerate(cands))]
    assert rank_test_items(model, ds).tolist() == want
    assert rank_test_items(model, ds, max_chunk_entries=3 * n * 6).tolist() == want  # several chunks


def test_split_rows_refuse_candidate_tables_without_negatives(tiny_dataset):
    """One column (no negatives) or a user list of another length is an error, not empty margins
    (the certificate and the attacks read these rows too)."""
    import dataclasses

    from amr_tf.errors import AmrError
    from amr_tf.evaluation import split_rows

    bad = dataclasses.replace(tiny_dataset, test_candidates=tiny_dataset.test_candidates[:, :1])
    with pytest.raises(AmrError, match=r"shape \(users, 1 \+ negatives\)"):
        split_rows(bad)
