"""``LocallyConnected3d`` against ``nn.Conv3d`` of the same shape: a training step's forward +
backward time and peak memory.

Questions: how much slower than the shared-kernel conv is the unshared 3-d layer (target
<= 3x), and does its peak memory beyond its own weight and weight gradient stay within the
conv's whole peak? Case (stated): 8 -> 16 channels, 3x3x3 kernel, padding 1, a 16^3 volume,
batch 32, input without gradient; medians of interleaved runs. Other cases: ``python -m
benchmarks.bench_locally_connected_3d CIN COUT SIDE BATCH`` (small batches cost more relative
to the conv: every step reads the whole per-location weight and writes its gradient). Peak:
live tensor bytes during one step (profiler allocator events), above what existed before it.

Run: ``python -m benchmarks.bench_locally_connected_3d [--quick | CIN COUT SIDE BATCH]``.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from tietorch import LocallyConnected3d

from ._common import interleaved_medians, peak_tensor_mib, table


def _step(model: nn.Module, x: torch.Tensor):
    def run() -> None:
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    return run


def main(argv: list[str] | None = None) -> None:
    quick = "--quick" in (sys.argv[1:] if argv is None else argv)
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--quick"]
    cin, cout, side, batch = (4, 8, 8, 2) if quick else (8, 16, 16, 32)
    if args:  # cin cout side batch
        cin, cout, side, batch = (int(a) for a in args)
    torch.manual_seed(0)
    conv = nn.Conv3d(cin, cout, 3, padding=1)
    lc = LocallyConnected3d(cin, cout, 3, input_size=side, padding=1)
    x = torch.randn(batch, cin, side, side, side)
    models = {"nn.Conv3d": conv, "LocallyConnected3d": lc}
    times = interleaved_medians({k: _step(m, x) for k, m in models.items()}, 5 if quick else 15)
    # the weight exists before the step: what the step adds of the layer's own is its gradient
    own = {k: sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20
           for k, m in models.items()}  # fmt: skip
    rows = []
    for name, model in models.items():
        peak = peak_tensor_mib(_step(model, x))
        rows.append((name, times[name], times[name] / times["nn.Conv3d"], peak, peak - own[name]))
    print(
        f"{cin} -> {cout} channels, 3x3x3, padding 1, {side}^3 volume, batch {batch}: "
        "training step (median ms, interleaved); peak MiB of live tensors, and beyond the "
        "layer's own weight + weight gradient"
    )
    print(table(("layer", "ms", "/ conv", "peak MiB", "beyond weight+grad"), rows))


if __name__ == "__main__":
    main()
