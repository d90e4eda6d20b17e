"""Projection heads of the other seed systems (the CrissCross heads are in models.py).

* ``avid_mlp``: AVID-CMA's head, Linear-ReLU-Linear-ReLU-Linear (512-512-128 in the paper's
  Tables 5/6), no normalisation layer, no predictor.
* ``gdt_mlp``: GDT/STiCA's head, Dropout-Linear(no bias)-BN-ReLU-Dropout-Linear (512-512-256,
  dropout 0.3 in STiCA; SvaCLR's "two-layered MLP" is taken to be the same).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

HEADS = ("simsiam", "avid_mlp", "gdt_mlp")


def avid_mlp(in_dim: int, dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, out_dim in enumerate(dims):
        layers.append(nn.Linear(in_dim, out_dim))
        if index < len(dims) - 1:
            layers.append(nn.ReLU(inplace=True))
        in_dim = out_dim
    return nn.Sequential(*layers)


def gdt_mlp(in_dim: int, dims: list[int], dropout: float, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    if len(dims) != 2:
        raise ValueError(f"gdt_mlp has two layers (hidden, output), got model.head_dims={dims}")
    hidden, out_dim = dims
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden, bias=False), norm(hidden), nn.ReLU(inplace=True),
                         nn.Dropout(dropout), nn.Linear(hidden, out_dim))
