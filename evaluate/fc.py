"""Linear FC classifier on a frozen backbone, for features too large for an SVM (appendix E.1:
32-frame video, Kinetics-400, DCASE).

Two ways to feed it (``fc.features``):

* ``online`` (the paper's Kinetics-400 and 32-frame protocol, the default): the backbone stays
  frozen and every epoch reads a fresh set of random, augmented clips per training sample
  (``train_pass``: 1 for Kinetics-400, 10 for 32 frames) through the evaluation loader; epoch e
  uses loader seed ``seed + e``, so epoch 0 sees the very clips the cached mode trains on;
* ``cached`` (fast option; DCASE, whose E.1 text trains on 60 extracted clips per sample): one
  training pass is extracted and the layer trains on those fixed vectors every epoch.

The paper gives no optimizer for this layer; ours (documented in docs/evaluate.md): features
standardised with the first epoch's training clips' mean/std, ``nn.Linear`` trained with SGD
(momentum 0.9) and cross-entropy on clip features, shuffled per epoch, a multi-step schedule, and
no selection on the test split: the last epoch's model is scored once, sample prediction = mean
of clip softmaxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from crisscross.evaluate.config import FEATURE_MODES, FCConfig  # noqa: F401 (re-exported: the fc section)
from crisscross.evaluate.linear import FeatureSet


@dataclass
class FCResult:
    accuracy: float
    epochs: int
    final_train_loss: float


class FCTrainer:
    """One linear layer trained epoch by epoch on whatever clip features each epoch brings.

    The standardisation (mean/std per feature) is fixed by the first epoch's training clips, so
    an online run and a cached run start from the same point.
    """

    def __init__(self, first_epoch: FeatureSet, num_classes: int, cfg: FCConfig):
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        x = torch.from_numpy(first_epoch.clips).float()
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-6)
        self.layer = nn.Linear(x.shape[1], num_classes)
        self.opt = torch.optim.SGD(self.layer.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, milestones=cfg.milestones, gamma=cfg.gamma)
        self.epochs_done = 0
        self.loss = float("nan")

    def fit_epoch(self, train: FeatureSet) -> None:
        """One pass over the epoch's clips in a fresh random order, then one scheduler step."""
        x = (torch.from_numpy(train.clips).float() - self.mean) / self.std
        y = torch.from_numpy(train.clip_labels).long()
        order = torch.randperm(len(x), generator=self.generator)
        loss = torch.tensor(float("nan"))
        for start in range(0, len(x), self.cfg.batch_size):
            idx = order[start:start + self.cfg.batch_size]
            loss = nn.functional.cross_entropy(self.layer(x[idx]), y[idx])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        self.sched.step()
        self.epochs_done += 1
        self.loss = float(loss.detach())

    @torch.no_grad()
    def score(self, test: FeatureSet) -> FCResult:
        """Top-1 of the sample predictions (mean clip softmax) on ``test``."""
        n, k, _ = test.features.shape
        xt = (torch.from_numpy(test.clips).float() - self.mean) / self.std
        probs = self.layer(xt).softmax(dim=1).reshape(n, k, -1).mean(dim=1)
        predicted = probs.argmax(dim=1).numpy()
        return FCResult(float(np.mean(predicted == test.labels)), self.epochs_done, self.loss)


def linear_fc(train: FeatureSet, test: FeatureSet, cfg: FCConfig, num_classes: int) -> FCResult:
    """The cached protocol: the same training clip features every epoch."""
    trainer = FCTrainer(train, num_classes, cfg)
    for _ in range(cfg.epochs):
        trainer.fit_epoch(train)
    return trainer.score(test)
