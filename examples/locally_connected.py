"""Locally connected layers: parameter counts, a small net on synthetic data, tiling, unshare.

Users moving from Keras (``LocallyConnected2D``) or from a forum snippet built from ``unfold``
(https://discuss.pytorch.org/t/locally-connected-layers/26979) ask for a convolution whose kernel
differs at every output location. This script

1. checks the parameter counts against the forum question's formula
   (``3*3*3*2*(22*22) = 26136``) and the Keras documentation's example;
2. trains, on data made by a *location-dependent* teacher (kernels repeating with period 2
   over the image, plus a little per-location noise), a plain ``Conv2d``, a tiled locally
   connected layer (``tie=TileShare(2)``: 2 x 2 kernels repeating over the image) and a fully
   unshared ``LocallyConnected2d``;
3. turns the trained ``Conv2d`` into a locally connected layer with ``unshare`` (same output at
   creation) and fine-tunes it, so every location drifts away from the shared kernel.

Run: ``python examples/locally_connected.py [--quick]``; exits non-zero if a check fails.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from _checks import check, setup, verdict
from torch import Tensor, nn

from tietorch import LocallyConnected2d, TileShare, unshare


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train(model: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float) -> float:
    """Full-batch Adam on the MSE; returns the final loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        return F.mse_loss(model(x), y).item()


def main(argv: list[str] | None = None) -> int:
    quick = setup(argv, __doc__)
    size, samples, steps = (10, 128, 40) if quick else (16, 512, 300)
    c_in, c_out, k = 2, 4, 3

    print("1. Parameter counts")
    forum = LocallyConnected2d(3, 2, 3, input_size=24, bias=False)  # the forum thread's layer
    print(
        f"   forum example, 3 -> 2 channels, 3x3, 24x24 input: weight "
        f"{tuple(forum.weight.shape)}, {forum.weight.numel():,} entries"
    )
    check("3*3*3*2*(22*22) == 26136", forum.weight.numel() == 3 * 3 * 3 * 2 * (22 * 22) == 26136)
    keras = LocallyConnected2d(3, 64, (3, 3), input_size=(32, 32))  # Keras docs' example
    expected = (30 * 30) * (3 * 3 * 3 * 64) + (30 * 30) * 64
    print(f"   Keras docs example, 3 -> 64 channels, 3x3, 32x32 input: {n_params(keras):,}")
    check("(30*30)*(3*3*3*64) + (30*30)*64", n_params(keras) == expected)
    for tile in (1, 2, 3):
        tiled = LocallyConnected2d(3, 64, 3, input_size=32, tie=TileShare(tile))
        formula = 64 * min(tile, 30) ** 2 * 3 * 3 * 3 + 64 * min(tile, 30) ** 2
        print(f"   same layer, tie=TileShare({tile}): {n_params(tiled):,} free parameters")
        check(f"TileShare({tile}) count == out*t*t*in*k*k + out*t*t", n_params(tiled) == formula)

    print(
        f"2. Fitting a location-dependent teacher ({c_in} -> {c_out} channels, {k}x{k}, "
        f"{size}x{size}, {samples} samples, {steps} Adam steps)"
    )
    # The teacher: kernels that repeat with period 2 over the image, plus a little
    # location-specific noise. A conv can only learn their average.
    tiled_teacher = LocallyConnected2d(c_in, c_out, k, input_size=size, padding=1, tie=TileShare(2))
    teacher = LocallyConnected2d(c_in, c_out, k, input_size=size, padding=1)
    with torch.no_grad():
        tiled_teacher.parametrizations.weight.original.normal_(0, 0.5)
        teacher.weight.copy_(tiled_teacher.weight + 0.05 * torch.randn_like(teacher.weight))
    x = torch.randn(samples, c_in, size, size)
    with torch.no_grad():
        y = teacher(x)
    students: dict[str, nn.Module] = {
        "Conv2d (one kernel)": nn.Conv2d(c_in, c_out, k, padding=1),
        "TileShare(2) (4 kernels)": LocallyConnected2d(
            c_in, c_out, k, input_size=size, padding=1, tie=TileShare(2)
        ),
        "LocallyConnected2d": LocallyConnected2d(c_in, c_out, k, input_size=size, padding=1),
    }
    losses = {}
    for name, model in students.items():
        losses[name] = train(model, x, y, steps, lr=0.05)
        print(f"   {name:26s} {n_params(model):7,} params   loss {losses[name]:.3g}")
    check(
        "the tiled and the locally connected students fit better than the conv",
        losses["TileShare(2) (4 kernels)"] < losses["Conv2d (one kernel)"] / 2
        and losses["LocallyConnected2d"] < losses["Conv2d (one kernel)"] / 2,
    )
    w = students["TileShare(2) (4 kernels)"].weight
    check(
        "the tiled layer's kernels repeat with period 2 exactly",
        torch.equal(w[2:], w[:-2]) and torch.equal(w[:, 2:], w[:, :-2]),
    )

    print("3. unshare: the trained conv as a locally connected layer, then fine-tuned")
    conv = students["Conv2d (one kernel)"]
    lc = unshare(conv, size)
    with torch.no_grad():
        gap = (lc(x) - conv(x)).abs().max().item()
    print(
        f"   at creation: {n_params(conv):,} -> {n_params(lc):,} parameters, "
        f"max output difference {gap:.1e}"
    )
    check("unshare(conv) gives the conv's output at creation", gap < 1e-5)
    tuned = train(lc, x, y, steps, lr=0.02)
    print(f"   loss {losses['Conv2d (one kernel)']:.3g} (conv) -> {tuned:.3g} (unshared, tuned)")
    check("fine-tuning the unshared layer lowers the loss", tuned < losses["Conv2d (one kernel)"])

    return verdict()


if __name__ == "__main__":
    sys.exit(main())
