"""Writing your own tie, with a closed-form layout, and testing it in one line.

The constraint ``W[i, j, a, b] = W[j, i, ks-1-a, ks-1-b]`` of a PyTorch forum question
(https://discuss.pytorch.org/t/intra-layer-tied-weights-in-a-convolution-layer/15514) is
declared as a relation; a hand-written ``layout`` computes the classes in closed form (each entry
is paired with its image, and the pair reads the parameter of its smaller flat index) instead of
by the generic search. ``tietorch.testing.check_tie`` then checks the closed form against the
declared relation: constraint satisfied, minimal count (by dense rank), projection and gradients.

A second version carries the mistake of the answer posted in that thread: it transposes the
kernel (``.t()``) where the constraint rotates it by 180 degrees. ``check_tie`` catches it and
says which entry breaks which relation.

Run: ``python examples/custom_tie.py [--quick]``; exits non-zero if a check fails.
"""

from __future__ import annotations

import math
import sys
import time

import torch
from _checks import check, setup, verdict
from torch import Tensor, nn

import tietorch
from tietorch import Tie, TieLayout
from tietorch.testing import check_tie


class SelfAdjointKernel(Tie):
    """``W[i, j, a, b] = W[j, i, ks-1-a, ks-1-b]`` on an (nf, nf, kh, kw) conv weight."""

    def relations(self, i: Tensor, j: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, ...]:
        # The declaration: what check_tie tests the layout against.
        return (j, i, -1 - a, -1 - b)

    def check_shape(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 4 or shape[0] != shape[1]:
            raise ValueError(f"{self!r} needs an (nf, nf, kh, kw) weight, got shape {shape}")

    def partner(self, flat: Tensor) -> Tensor:
        """The flat index of the entry each entry is tied to."""
        return flat.transpose(0, 1).flip(2, 3)

    def layout(self, shape: tuple[int, ...]) -> TieLayout:
        """Closed form: an entry and its partner read the parameter of the smaller flat index;
        parameters are numbered in order of those representatives."""
        self.check_shape(shape)
        flat = torch.arange(math.prod(shape)).view(shape)
        representative = torch.minimum(flat, self.partner(flat))
        is_first = (representative == flat).reshape(-1)
        rank = torch.cumsum(is_first, 0) - 1  # parameter number of each representative
        index = rank[representative.reshape(-1)].view(shape)
        return TieLayout(index=index, n_free=int(is_first.sum()))


class TransposedKernel(SelfAdjointKernel):
    """Buggy: pairs ``W[i, j]`` with ``W[j, i].t()`` (the forum answer's ``param.t()``)."""

    def check_shape(self, shape: tuple[int, ...]) -> None:
        super().check_shape(shape)
        if shape[2] != shape[3]:
            raise ValueError(f"{self!r} needs square kernels, got shape {shape}")

    def partner(self, flat: Tensor) -> Tensor:
        return flat.transpose(0, 1).transpose(2, 3)


def main(argv: list[str] | None = None) -> int:
    quick = setup(argv, __doc__)
    examples = 30 if quick else 200

    print(f"1. check_tie(SelfAdjointKernel()) with {examples} Hypothesis examples")
    start = time.perf_counter()
    check_tie(SelfAdjointKernel(), max_examples=examples)
    print(f"   passed in {time.perf_counter() - start:.2f} s")
    check("the closed form passes check_tie", True)

    print("2. The closed form against the generic solve of the same relation")
    shape = (64, 64, 3, 3) if quick else (256, 256, 3, 3)
    generic = Tie.from_relation(lambda i, j, a, b: (j, i, -1 - a, -1 - b))
    start = time.perf_counter()
    fast = SelfAdjointKernel().layout(shape)
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    solved = generic.layout(shape)
    t_solved = time.perf_counter() - start
    print(
        f"   {math.prod(shape):,} entries -> {fast.n_free:,} free; closed form "
        f"{t_fast * 1e3:.1f} ms, generic solve {t_solved * 1e3:.1f} ms"
    )
    check(
        "same classes, same numbering as the solver",
        torch.equal(fast.index, solved.index) and fast.n_free == solved.n_free,
    )
    nf, k = shape[0], shape[2]
    check(
        "n_free == nf(nf-1)/2*k*k + nf*ceil(k*k/2)",
        fast.n_free == nf * (nf - 1) // 2 * k * k + nf * math.ceil(k * k / 2),
    )

    print("3. Used like any tie")
    conv = nn.Conv2d(8, 8, 3, padding=1)
    tietorch.register_tie(conv, "weight", SelfAdjointKernel())
    w = conv.weight
    check(
        "register_tie: the weight satisfies the constraint",
        torch.equal(w, w.transpose(0, 1).flip(2, 3)),
    )

    print("4. The buggy layout (kernel transposed instead of rotated) is caught")
    try:
        check_tie(TransposedKernel(), max_examples=examples)
    except AssertionError as error:
        print("   check_tie says:\n   " + str(error).replace("\n", "\n   "))
        check("check_tie caught the bug", "does not hold" in str(error))
    else:
        check("check_tie caught the bug", False)

    return verdict()


if __name__ == "__main__":
    sys.exit(main())
