"""Linear classifiers on frozen features: LinearSVC (one-vs-rest) and a linear FC layer.

Protocol (CrissCross supplement, appendix E.1), made honest:

* every sample contributes K clip feature vectors (K augmented clips for training, K uniformly
  spaced un-augmented clips for testing); the SVM is trained on clips, and a sample's prediction
  is the argmax of the mean of its clips' decision scores;
* the cost C is chosen from ``COSTS`` by (stratified, grouped) cross-validation on the TRAINING
  split only, with all clips of a sample -- and all samples that share a source (ESC-50
  ``src_file``, UCF101 group) -- kept on one side of every CV split; the test split is scored once
  with that cost;
* the paper's own figure, the best test accuracy over all costs, is also computed but labelled
  ``best_cost_on_test`` (comparison only: it is selected on the test set).

The (cost, CV fold) fits are independent, so they run in parallel with joblib.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from crisscross.evaluate.config import COSTS, SVMConfig  # noqa: F401 (re-exported: the svm section)

# The paper's sweep (appendix E.1), in increasing order (ties in CV accuracy go to the smaller,
# i.e. more strongly regularised, cost).


@dataclass
class FeatureSet:
    """Clip features of one split: ``features[i, k]`` is clip k of sample ``keys[i]``."""

    keys: list[str]
    features: np.ndarray  # [N, K, D] float32
    labels: np.ndarray  # [N] int, class index
    groups: np.ndarray | None = None  # [N] samples sharing a group never straddle a CV split

    def __post_init__(self) -> None:
        if self.features.ndim != 3:
            raise ValueError(f"features must be [N, K, D], got shape {self.features.shape}")
        n = self.features.shape[0]
        if len(self.keys) != n or self.labels.shape != (n,):
            raise ValueError(f"{n} feature rows but {len(self.keys)} keys / labels {self.labels.shape}")
        if self.groups is not None and len(self.groups) != n:
            raise ValueError(f"{n} feature rows but {len(self.groups)} groups")

    @property
    def clips(self) -> np.ndarray:
        """All clips as rows, [N*K, D]."""
        n, k, d = self.features.shape
        return self.features.reshape(n * k, d)

    @property
    def clip_labels(self) -> np.ndarray:
        return np.repeat(self.labels, self.features.shape[1])

    def subset(self, rows: np.ndarray) -> FeatureSet:
        return FeatureSet(
            keys=[self.keys[i] for i in rows],
            features=self.features[rows],
            labels=self.labels[rows],
            groups=None if self.groups is None else self.groups[rows],
        )


@dataclass
class SVMResult:
    accuracy: float  # test accuracy with the CV-chosen cost: THE number
    cost: float  # the CV-chosen cost
    cv_accuracy: dict[float, float]  # mean CV accuracy (training split only) per cost
    test_accuracy_per_cost: dict[float, float] = field(default_factory=dict)  # comparison only
    cv_folds: int = 0
    fit_seconds: float = 0.0
    unconverged_fits: int = 0

    @property
    def best_cost_on_test(self) -> float:
        return max(self.test_accuracy_per_cost, key=lambda c: (self.test_accuracy_per_cost[c], -c))

    @property
    def best_test_accuracy(self) -> float:
        """The paper's figure: the best test accuracy over the sweep (selected on test)."""
        return self.test_accuracy_per_cost[self.best_cost_on_test]


def _make_svm(cost: float, cfg: SVMConfig):
    svm = LinearSVC(C=cost, max_iter=cfg.max_iter, random_state=cfg.seed, dual=cfg.dual)
    return make_pipeline(StandardScaler(), svm) if cfg.standardize else svm


def sample_scores(model, data: FeatureSet, num_classes: int) -> np.ndarray:
    """Mean over each sample's clips of the per-class decision scores, [N, num_classes]."""
    raw = model.decision_function(data.clips)
    classes = model.classes_ if hasattr(model, "classes_") else model[-1].classes_
    if raw.ndim == 1:  # binary LinearSVC: one score for classes_[1]
        raw = np.stack([-raw, raw], axis=1)
    scores = np.full((raw.shape[0], num_classes), -np.inf, dtype=np.float64)
    scores[:, classes] = raw  # classes absent from this fit's training data can never win
    n, k, _ = data.features.shape
    return scores.reshape(n, k, num_classes).mean(axis=1)


def _fit_and_score(train: FeatureSet, test: FeatureSet, cost: float, cfg: SVMConfig, num_classes: int,
                   fit_rows: np.ndarray | None = None, score_rows: np.ndarray | None = None):
    """Fit on the clips of ``train`` (its ``fit_rows``); return (sample-level accuracy on ``test``
    (its ``score_rows``), converged). Subsets are cut here, inside the worker, so that the
    parallel grid shares one copy of the features (joblib memory-maps large arrays) instead of
    materialising a training subset per (cost, fold) job."""
    if fit_rows is not None:
        train = train.subset(fit_rows)
    if score_rows is not None:
        test = test.subset(score_rows)
    model = _make_svm(cost, cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(train.clips, train.clip_labels)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    predicted = sample_scores(model, test, num_classes).argmax(axis=1)
    return float(np.mean(predicted == test.labels)), converged


def cv_splits(train: FeatureSet, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, grouped K-fold over the training samples (never over single clips)."""
    groups = train.groups if train.groups is not None else np.arange(len(train.keys))
    n_groups = len(np.unique(groups))
    # small training splits (the reduced demo, a tiny class): no more folds than the smallest class has samples
    smallest_class = int(min(c for c in np.bincount(train.labels) if c > 0)) if len(train.labels) else 0
    n_folds = min(n_folds, n_groups, max(smallest_class, 2))
    if n_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 groups in the training split, got {n_groups}")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has fewer members than n_splits"
        warnings.simplefilter("ignore", UserWarning)
        return list(splitter.split(np.zeros(len(train.keys)), train.labels, groups))


def linear_svm(train: FeatureSet, test: FeatureSet, cfg: SVMConfig, num_classes: int | None = None) -> SVMResult:
    """Choose C by grouped CV on ``train``, then fit on all of ``train`` and score ``test`` once.

    The comparison-only sweep (every cost scored on test) is fitted in the same parallel batch.
    """
    if train.features.shape[2] != test.features.shape[2]:
        raise ValueError(f"train/test feature dims differ: {train.features.shape[2]} vs {test.features.shape[2]}")
    if len(np.unique(train.labels)) < 2:
        raise ValueError("the training split has fewer than 2 classes")
    num_classes = num_classes or int(max(train.labels.max(), test.labels.max()) + 1)
    folds = cv_splits(train, cfg.cv_folds, cfg.seed)
    start = time.perf_counter()
    jobs = [(c, train, tr, va) for c in cfg.costs for tr, va in folds]  # CV: train's own rows only
    jobs += [(c, test, None, None) for c in cfg.costs]  # final fits on all of train, one per cost
    outcomes = Parallel(n_jobs=cfg.n_jobs)(
        delayed(_fit_and_score)(train, score_on, c, cfg, num_classes, fit_rows, score_rows)
        for c, score_on, fit_rows, score_rows in jobs
    )
    n_cv = len(cfg.costs) * len(folds)
    cv_acc = {c: float(np.mean([outcomes[i * len(folds) + j][0] for j in range(len(folds))]))
              for i, c in enumerate(cfg.costs)}
    test_acc = {c: outcomes[n_cv + i][0] for i, c in enumerate(cfg.costs)}
    chosen = max(cfg.costs, key=lambda c: (cv_acc[c], -c))
    return SVMResult(
        accuracy=test_acc[chosen],
        cost=chosen,
        cv_accuracy=cv_acc,
        test_accuracy_per_cost=test_acc,
        cv_folds=len(folds),
        fit_seconds=time.perf_counter() - start,
        unconverged_fits=sum(not ok for _, ok in outcomes),
    )
