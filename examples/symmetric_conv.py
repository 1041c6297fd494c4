"""A self-adjoint convolution with the minimal number of parameters (https://discuss.pytorch.org/t/intra-layer-tied-weights-in-a-convolution-layer/15514).

The question: a convolution weight with ``W[i, j, a, b] = W[j, i, k-1-a, k-1-b]``, without the
redundant parameters of the workaround ``W = (W0 + W0.flip(2, 3).permute(1, 0, 2, 3)) / 2``.

This script shows that

1. ``tietorch.SymmetricFlip()`` trains exactly ``nf(nf-1)/2 * k*k + nf * ceil(k*k/2)``
   parameters, against ``nf * nf * k*k`` for the workaround;
2. with same padding and an odd kernel the tied layer is a self-adjoint operator,
   ``<conv(x), y> == <x, conv(y)>`` (an untied layer is not);
3. registering the tie on a layer holding ``W0`` gives exactly the workaround's ``W`` (both are
   the orthogonal projection onto the constraint), so nothing is lost by switching;
4. after training with Adam the constraint still holds bit for bit.

Run: ``python examples/symmetric_conv.py [--quick]``; exits non-zero if a check fails.
"""

from __future__ import annotations

import math
import sys
import time

import torch
import torch.nn.functional as F
from _checks import check, setup, verdict
from torch import Tensor, nn

import tietorch


def minimal_count(nf: int, k: int) -> int:
    """Free parameters of ``W[i, j, a, b] = W[j, i, k-1-a, k-1-b]`` on an (nf, nf, k, k) weight."""
    return nf * (nf - 1) // 2 * k * k + nf * math.ceil(k * k / 2)


class RedundantWorkaround(nn.Module):
    """The question's workaround: a full ``W0``, symmetrized in every forward."""

    def __init__(self, w0: Tensor, padding: int) -> None:
        super().__init__()
        self.w0 = nn.Parameter(w0.detach().clone())
        self.padding = padding

    def weight(self) -> Tensor:
        return (self.w0 + self.w0.flip(2, 3).permute(1, 0, 2, 3)) / 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight(), padding=self.padding)


def adjoint_gap(weight: Tensor, padding: int, x: Tensor, y: Tensor) -> float:
    """``|<conv(x), y> - <x, conv(y)>|`` relative to the size of the terms."""
    weight = weight.detach()
    lhs = (F.conv2d(x, weight, padding=padding) * y).sum()
    rhs = (x * F.conv2d(y, weight, padding=padding)).sum()
    return float((lhs - rhs).abs() / (lhs.abs() + rhs.abs()))


def satisfies(weight: Tensor) -> bool:
    """The forum question's constraint, checked bit for bit."""
    return bool(torch.equal(weight, weight.transpose(0, 1).flip(2, 3)))


def main(argv: list[str] | None = None) -> int:
    quick = setup(argv, __doc__)
    nf, k, size = (8, 3, 12) if quick else (32, 3, 16)
    steps, batch = (30, 16) if quick else (300, 32)
    pad = k // 2

    print(f"1. Parameter counts for an ({nf}, {nf}, {k}, {k}) weight")
    conv = nn.Conv2d(nf, nf, k, padding=pad, bias=False)
    w0 = conv.weight.detach().clone()
    tietorch.register_tie(conv, "weight", tietorch.SymmetricFlip())
    tied_count = sum(p.numel() for p in conv.parameters())
    workaround_count = nf * nf * k * k
    print(
        f"   tietorch: {tied_count:,} free parameters; the workaround trains {workaround_count:,} "
        f"({workaround_count - tied_count:,} of them cannot change W)"
    )
    check("tietorch count == nf(nf-1)/2*k*k + nf*ceil(k*k/2)", tied_count == minimal_count(nf, k))
    for kk in (1, 3, 5, 7):
        n = tietorch.SymmetricFlip().layout((nf, nf, kk, kk)).n_free
        print(f"   k={kk}: {n:,} free of {nf * nf * kk * kk:,} entries")
        if n != minimal_count(nf, kk):
            check(f"count for k={kk}", False)

    print("2. Self-adjointness, <conv(x), y> == <x, conv(y)> (float64)")
    x, y = torch.randn(2, 4, nf, size, size, dtype=torch.float64).unbind(0)
    tied_gap = adjoint_gap(conv.weight.double(), pad, x, y)
    plain_gap = adjoint_gap(w0.double(), pad, x, y)
    print(f"   relative gap: tied {tied_gap:.1e}, untied {plain_gap:.1e}")
    check("the tied convolution is self-adjoint", tied_gap < 1e-12)
    check("an untied convolution is not", plain_gap > 1e-3)

    print("3. The projection at registration is the workaround's symmetrization")
    workaround = RedundantWorkaround(w0, pad)
    check(
        "register_tie(W0) gives (W0 + W0.flip.permute) / 2",
        torch.allclose(conv.weight, workaround.weight(), atol=1e-7),
    )

    print(f"4. Training both for {steps} Adam steps to imitate a self-adjoint teacher")
    teacher = nn.Conv2d(nf, nf, k, padding=pad, bias=False)
    tietorch.register_tie(teacher, "weight", tietorch.SymmetricFlip())
    data = torch.randn(batch * 4, nf, size, size)
    with torch.no_grad():
        targets = teacher(data)
    models = {"tietorch": conv, "workaround": workaround}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-2) for name, m in models.items()}
    seconds = dict.fromkeys(models, 0.0)
    first = {}
    for step in range(steps):
        xb = data[(step % 4) * batch : (step % 4 + 1) * batch]
        yb = targets[(step % 4) * batch : (step % 4 + 1) * batch]
        for name, model in models.items():
            start = time.perf_counter()
            optimizers[name].zero_grad()
            loss = F.mse_loss(model(xb), yb)
            loss.backward()
            optimizers[name].step()
            seconds[name] += time.perf_counter() - start
            first.setdefault(name, loss.item())
    with torch.no_grad():
        final = {name: F.mse_loss(m(data), targets).item() for name, m in models.items()}
    for name in models:
        print(
            f"   {name:10s}: loss {first[name]:.3g} -> {final[name]:.3g}, "
            f"{seconds[name] / steps * 1e3:.2f} ms/step"
        )
    check("training lowered the tied model's loss", final["tietorch"] < first["tietorch"] / 2)
    check("the constraint still holds exactly after training", satisfies(conv.weight))
    gap = adjoint_gap(conv.weight.detach().double(), pad, x, y)
    check("and the trained layer is still self-adjoint", gap < 1e-12)

    return verdict()


if __name__ == "__main__":
    sys.exit(main())
