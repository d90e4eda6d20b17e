"""Nearest-neighbour retrieval with recall@k (CrissCross appendix E.3; SpeedAug appendix A.5).

A query is a hit at k when at least one of its k nearest neighbours (cosine distance, scikit-learn
``NearestNeighbors``) has the query's class. Features are per sample: the mean over the sample's
uniformly spaced clips (the paper found l2-normalisation or batch-norm of features did not help,
so neither is applied).

* uni-modal (video->video, audio->audio): test-split samples query the training-split samples;
* cross-modal (video->audio, audio->video, SpeedAug A.5): within one split, each sample's video
  queries the audio of all samples of that split (and vice versa); the query's own counterpart is
  in the gallery, as in A.5.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

DEFAULT_KS: tuple[int, ...] = (1, 5, 20)
CROSS_MODAL_KS: tuple[int, ...] = (1, 5, 10, 20)  # SpeedAug Table 6 also reports R@10


def nearest_neighbours(queries: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    """Indices into ``gallery`` of each query's k nearest neighbours by cosine distance, [Q, k].

    Brute force, so ties are resolved the same way on every run.
    """
    if queries.ndim != 2 or gallery.ndim != 2:
        raise ValueError(f"features must be 2-D [n, dim], got {queries.shape} and {gallery.shape}")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query dim {queries.shape[1]} != gallery dim {gallery.shape[1]}: cross-modal retrieval "
            "needs encoders with the same output width"
        )
    if not 1 <= k <= len(gallery):
        raise ValueError(f"k={k} but the gallery holds {len(gallery)} samples")
    index = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(gallery)
    return index.kneighbors(queries, return_distance=False)


def recall_at_k(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    ks: tuple[int, ...] = DEFAULT_KS,
) -> dict[int, float]:
    """R@k for each k in ``ks`` that the gallery can serve (k <= gallery size); others are left out."""
    usable = sorted(k for k in ks if k <= len(gallery))
    if not usable:
        raise ValueError(f"no k in {ks} fits a gallery of {len(gallery)} samples")
    neighbours = nearest_neighbours(queries, gallery, max(usable))
    hits = np.asarray(gallery_labels)[neighbours] == np.asarray(query_labels)[:, None]
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in usable}


def sample_means(clip_features: np.ndarray) -> np.ndarray:
    """[N, K, D] clip features -> [N, D] sample features (mean over clips)."""
    if clip_features.ndim != 3:
        raise ValueError(f"expected [N, K, D], got {clip_features.shape}")
    return clip_features.mean(axis=1)
