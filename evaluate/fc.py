"""Linear FC classifier on frozen features, for features too large for an SVM (appendix E.1:
32-frame video, Kinetics-400, DCASE).

The paper gives no optimizer for this layer; ours (documented in docs/evaluate.md): features
standardised with the training clips' mean/std, ``nn.Linear`` trained with SGD (momentum 0.9) and
cross-entropy on clip features, a multi-step schedule, and no selection on the test split: the
last epoch's model is scored once, sample prediction = mean of clip softmaxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from crisscross.evaluate.linear import FeatureSet


@dataclass
class FCConfig:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: list[int] = field(default_factory=lambda: [20, 25])
    gamma: float = 0.1
    seed: int = 0

    @classmethod
    def from_dict(cls, cfg: dict) -> "FCConfig":
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fc options: {sorted(unknown)}")
        return cls(**cfg)


@dataclass
class FCResult:
    accuracy: float
    epochs: int
    final_train_loss: float


def linear_fc(train: FeatureSet, test: FeatureSet, cfg: FCConfig, num_classes: int) -> FCResult:
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(train.clips).float()
    y = torch.from_numpy(train.clip_labels).long()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    layer = nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.SGD(layer.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestones, gamma=cfg.gamma)
    loss = torch.tensor(float("nan"))
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            loss = nn.functional.cross_entropy(layer(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    with torch.no_grad():
        n, k, d = test.features.shape
        xt = (torch.from_numpy(test.clips).float() - mean) / std
        probs = layer(xt).softmax(dim=1).reshape(n, k, num_classes).mean(dim=1)
    predicted = probs.argmax(dim=1).numpy()
    return FCResult(float(np.mean(predicted == test.labels)), cfg.epochs, float(loss.detach()))
