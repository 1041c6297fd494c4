"""A permutation-invariant set classifier (DeepSets) from tietorch's equivariant ties.

The task: a set of n numbers (standard normal) is labelled 1 when its largest element exceeds
1.5 (about half the sets). The training sets are shown sorted (a canonical order, as data often
comes), the test sets in random order. A DeepSets network, whose layers are
``nn.Linear(n, n)`` tied with ``Equivariant(S_n, S_n)`` (``lambda * x + gamma * sum(x)``, 2
parameters each) and an ``Invariant`` bias, then a readout tied with ``Equivariant(S_n,
trivial)``, cannot depend on the order: it scores the same on the permuted test sets. An MLP
on the flattened set, with many more parameters, learns to look at the last (largest) position
and fails once the order changes.

Run: ``python examples/deepsets.py [--quick]``; exits non-zero if a check fails.
"""

from __future__ import annotations

import sys

import torch
from _checks import check, setup, verdict
from torch import Tensor, nn

import tietorch
from tietorch import Equivariant, Invariant, groups
from tietorch.testing import check_equivariance


class DeepSets(nn.Module):
    """``width`` equivariant channels over the set, ReLU, summed, an invariant readout."""

    def __init__(self, n: int, width: int) -> None:
        super().__init__()
        s = groups.symmetric(n)
        self.phi = nn.ModuleList(nn.Linear(n, n) for _ in range(width))
        for layer in self.phi:
            tietorch.register_tie(layer, "weight", Equivariant(s, s))
            tietorch.register_tie(layer, "bias", Invariant(s))
        self.rho = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.stack([torch.relu(layer(x)).sum(-1) for layer in self.phi], -1)
        return self.rho(pooled).squeeze(-1)


class FlatMLP(nn.Module):
    """An MLP on the set flattened in its given order: one logit per set."""

    def __init__(self, n: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def sets(count: int, n: int, sort: bool) -> tuple[Tensor, Tensor]:
    x = torch.randn(count, n)
    y = (x.max(-1).values > 1.5).float()
    return (x.sort(-1).values if sort else x), y


def train(model: nn.Module, x: Tensor, y: Tensor, steps: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    loss_fn = nn.BCEWithLogitsLoss()
    for step in range(steps):
        batch = torch.randint(0, len(x), (128,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss_fn(model(x[batch]), y[batch]).backward()
        opt.step()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float(((model(x) > 0).float() == y).float().mean())


def main(argv: list[str] | None = None) -> int:
    quick = setup(argv, __doc__)
    n, steps = 10, 150 if quick else 600
    x_train, y_train = sets(4000, n, sort=True)
    x_test, y_test = sets(2000, n, sort=False)
    x_test_sorted = x_test.sort(-1).values
    models = {"DeepSets (tied)": DeepSets(n, width=8), "MLP on the flattened set": FlatMLP(n, 64)}
    print(f"sets of {n} numbers, label: max > 1.5; trained on sorted sets, {steps} Adam steps")
    print(f"  {'model':26s} {'params':>7s} {'sorted test':>12s} {'permuted test':>14s}")
    results = {}
    for name, model in models.items():
        train(model, x_train, y_train, steps)
        params = sum(p.numel() for p in model.parameters())
        results[name] = (
            params,
            accuracy(model, x_test_sorted, y_test),
            accuracy(model, x_test, y_test),
        )
        print(f"  {name:26s} {params:7d} {results[name][1]:12.3f} {results[name][2]:14.3f}")
    deep, mlp = results["DeepSets (tied)"], results["MLP on the flattened set"]
    check("DeepSets scores >= 0.9 on permuted test sets", deep[2] >= 0.9)
    check("DeepSets scores the same on sorted and permuted sets", abs(deep[1] - deep[2]) < 1e-9)
    check("the MLP loses accuracy once the order changes", mlp[2] < mlp[1] - 0.05)
    check("DeepSets has fewer parameters than the MLP", deep[0] < mlp[0])
    perm = torch.randperm(n)
    error = check_equivariance(
        models["DeepSets (tied)"], lambda x: x[..., perm], lambda y: y, inputs=x_test[:64]
    )
    check(f"DeepSets is permutation invariant (max error {error:.1e})", error < 1e-5)
    return verdict()


if __name__ == "__main__":
    sys.exit(main())
