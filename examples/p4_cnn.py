"""A rotation-invariant classifier from plain ``nn.Conv2d`` layers tied as p4 group convolutions.

The task: 9 x 9 images holding one of three small patterns (an L, a T, a bar with a dot) at a
random place, upright in training, rotated by a random multiple of 90 degrees in the test set.
The p4 CNN (a lifting conv, a group conv, a projection conv, all ``nn.Conv2d`` tied with
``GroupConv``, then a max over space) is invariant to those rotations by construction: it scores
the same on the rotated test set. An untied CNN of the same size learns the upright patterns
only.

Run: ``python examples/p4_cnn.py [--quick]``; exits non-zero if a check fails.
"""

from __future__ import annotations

import sys
import time

import torch
from _checks import check, setup, verdict
from torch import Tensor, nn

import tietorch
from tietorch import GroupConv
from tietorch.testing import check_equivariance, field_action

PATTERNS = [
    [[1, 0, 0], [1, 0, 0], [1, 1, 1]],  # L
    [[1, 1, 1], [0, 1, 0], [0, 1, 0]],  # T
    [[1, 1, 1], [0, 0, 0], [0, 1, 0]],  # a bar and a dot
]


def images(count: int, rotate: bool, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    labels = torch.randint(0, len(PATTERNS), (count,), generator=generator)
    x = 0.1 * torch.randn(count, 1, 9, 9, generator=generator)
    for n, label in enumerate(labels.tolist()):
        pattern = torch.tensor(PATTERNS[label], dtype=torch.float32)
        if rotate:
            pattern = torch.rot90(pattern, int(torch.randint(0, 4, (1,), generator=generator)))
        row, col = torch.randint(0, 7, (2,), generator=generator).tolist()
        x[n, 0, row : row + 3, col : col + 3] += pattern
    return x, labels


def cnn(tied: bool, fields: int = 4) -> nn.Module:
    channels = fields * 4
    layers = [
        nn.Conv2d(1, channels, 3, padding=1),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.Conv2d(channels, len(PATTERNS), 3, padding=1),
    ]
    if tied:
        for conv, reps in zip(
            layers, [("trivial", "regular"), ("regular", "regular"), ("regular", "trivial")]
        ):
            tie = GroupConv("p4", *reps)
            tietorch.register_tie(conv, "weight", tie)
            tietorch.register_tie(conv, "bias", tie)
    return nn.Sequential(
        layers[0],
        nn.ReLU(),
        layers[1],
        nn.ReLU(),
        layers[2],
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
    )


def train(model: nn.Module, x: Tensor, y: Tensor, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    start = time.perf_counter()
    for step in range(steps):
        batch = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
    return (time.perf_counter() - start) / steps * 1e3


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def main(argv: list[str] | None = None) -> int:
    quick = setup(argv, __doc__)
    steps = 150 if quick else 500
    generator = torch.Generator().manual_seed(0)
    x_train, y_train = images(2000, rotate=False, generator=generator)
    x_test, y_test = images(1000, rotate=True, generator=generator)
    x_upright, y_upright = images(1000, rotate=False, generator=generator)
    print(f"3 patterns on 9x9 images; trained upright ({steps} Adam steps), tested rotated")
    print(f"  {'model':22s} {'params':>7s} {'ms/step':>8s} {'upright':>8s} {'rotated':>8s}")
    results = {}
    for name, tied in (("p4 CNN (GroupConv)", True), ("untied CNN", False)):
        torch.manual_seed(0)
        model = cnn(tied)
        ms = train(model, x_train, y_train, steps)
        params = sum(p.numel() for p in model.parameters())
        results[name] = (
            params,
            accuracy(model, x_upright, y_upright),
            accuracy(model, x_test, y_test),
        )
        print(f"  {name:22s} {params:7d} {ms:8.2f} {results[name][1]:8.3f} {results[name][2]:8.3f}")
    p4, plain = results["p4 CNN (GroupConv)"], results["untied CNN"]
    check("the p4 CNN scores >= 0.9 on rotated test images", p4[2] >= 0.9)
    check("the untied CNN scores lower on rotated images than upright", plain[2] < plain[1] - 0.05)
    check("the p4 CNN has fewer parameters", p4[0] < plain[0])
    model = cnn(True).double()
    error = max(
        check_equivariance(
            model,
            field_action("p4", "trivial", (0, r)),
            lambda y: y,
            inputs=x_test[:16].double(),
            atol=1e-10,
        )
        for r in range(4)
    )
    check(f"the p4 CNN's prediction is rotation invariant (max error {error:.1e})", error < 1e-10)
    return verdict()


if __name__ == "__main__":
    sys.exit(main())
