"""Equivariant layers: from group generators to a registered tie, and the DeepSets fast path.

Questions: how long does it take to go from generators (``tietorch.groups``) to a tie registered
on a fresh ``nn.Linear`` (median of several runs, each on a new layer and a new tie, so no
layout cache helps): DeepSets on n = 1000 (target <= 50 ms), Maron et al.'s graph layer on
n = 20 (160,000 entries; target <= 0.5 s), the icosahedron's rotation group on its 12
vertices; with the free-parameter count each gives. Then a DeepSets layer's training step, the
gathered weight against ``fast_forward``'s diagonal-plus-constant rule.

Run: ``python -m benchmarks.bench_equivariant [--quick]``.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

import tietorch
from tietorch import Equivariant, groups

from ._common import interleaved_medians, table, training_step


def _construct(
    perms: Callable[[], tuple[list[torch.Tensor], list[torch.Tensor]]], repeats: int
) -> tuple[float, int]:
    """Median milliseconds from generators to a registered tie, and the free count."""
    times, free = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        in_perms, out_perms = perms()
        layer = nn.Linear(len(in_perms[0]), len(out_perms[0]), bias=False)
        tietorch.register_tie(layer, "weight", Equivariant(in_perms, out_perms))
        times.append((time.perf_counter() - start) * 1e3)
        free = layer.parametrizations.weight.original.numel()
    return statistics.median(times), free


def _same(make: Callable[[], list[torch.Tensor]]) -> Callable[[], tuple[list, list]]:
    def both() -> tuple[list, list]:
        g = make()
        return g, g

    return both


def main(argv: list[str] | None = None) -> None:
    quick = "--quick" in (sys.argv[1:] if argv is None else argv)
    repeats = 3 if quick else 7
    cases = [
        ("DeepSets, S_n on a set, n=1000", _same(lambda: groups.symmetric(1000))),
        (
            "Maron et al., S_n on n x n, n=20",
            _same(lambda: groups.on_tuples(groups.symmetric(20), 2)),
        ),
        ("icosahedron rotations on 12 vertices", _same(groups.icosahedral)),
    ]
    rows = []
    for name, perms in cases:
        ms, free = _construct(perms, repeats)
        rows.append((name, ms, free))
    print("generators -> register_tie on a fresh Linear (median ms)")
    print(table(("layer", "ms", "free"), rows))
    print()
    n, batch = (256, 64) if quick else (1024, 256)
    s = groups.symmetric(n)
    layers = {}
    for label in ("gathered", "fast_forward"):
        torch.manual_seed(0)
        layer = nn.Linear(n, n)
        tietorch.register_tie(layer, "weight", Equivariant(s, s))
        if label == "fast_forward":
            tietorch.fast_forward(layer)
        layers[label] = layer
    x = torch.randn(batch, n)
    times = interleaved_medians(
        {k: training_step(m, x) for k, m in layers.items()}, 5 if quick else 15
    )
    print(f"DeepSets Linear({n}, {n}) training step, batch {batch} (median ms, interleaved)")
    ratios = [(k, v, v / times["gathered"]) for k, v in times.items()]
    print(table(("variant", "ms", "/ gathered"), ratios))


if __name__ == "__main__":
    main()
