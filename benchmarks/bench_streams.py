"""Stream sharing: N input streams through one filter bank, outputs kept apart, as asked in
https://discuss.pytorch.org/t/convolutional-layers-with-shared-weights-for-each-input-channel/36172.

Compares the forum thread's loop-and-concatenate with a grouped convolution whose groups are tied
by ``ShareAcrossGroups`` (weight and bias), and with folding the streams into the batch:
same output, same parameters; time (forward + backward) and peak live-tensor memory.

Run: ``python benchmarks/bench_streams.py [--quick]`` (or ``python -m benchmarks``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tietorch as tt
from benchmarks._common import interleaved_medians, peak_tensor_mib, table


class LoopAndCat(nn.Module):
    """The forum thread's workaround: one Conv2d(1, bank) per stream in a loop, concatenated."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv0 = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv0(x[:, i : i + 1]) for i in range(x.shape[1])], dim=1)


class FoldIntoBatch(nn.Module):
    """The streams as extra batch entries of one Conv2d(1, bank)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv0 = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h, w = x.shape
        y = self.conv0(x.reshape(b * n, 1, h, w))
        return y.reshape(b, n * y.shape[1], *y.shape[2:])


def tied_grouped(conv: nn.Conv2d, streams: int) -> nn.Conv2d:
    """A grouped conv, one group per stream, all groups tied to ``conv``'s filters."""
    bank = conv.out_channels
    grouped = nn.Conv2d(streams, streams * bank, conv.kernel_size, groups=streams)
    tt.register_tie(grouped, "weight", tt.ShareAcrossGroups(streams))
    tt.register_tie(grouped, "bias", tt.ShareAcrossGroups(streams))
    grouped.weight = conv.weight.detach().repeat(streams, 1, 1, 1)
    grouped.bias = conv.bias.detach().repeat(streams)
    return grouped


def run(quick: bool) -> str:
    torch.manual_seed(0)
    rows = []
    cases = [(32, 8, 16, 32)] if quick else [(32, 8, 16, 32), (32, 32, 16, 32), (8, 8, 64, 64)]
    for batch, streams, bank, side in cases:
        conv = nn.Conv2d(1, bank, 3)
        variants = {
            "loop + cat": LoopAndCat(conv),
            "grouped + ShareAcrossGroups": tied_grouped(conv, streams),
            "streams folded into batch": FoldIntoBatch(conv),
            "grouped, untied (kernel alone)": nn.Conv2d(streams, streams * bank, 3, groups=streams),
        }
        x = torch.randn(batch, streams, side, side)
        reference = variants["loop + cat"](x)
        for name, model in variants.items():
            if "untied" not in name and not torch.allclose(model(x), reference, atol=1e-5):
                raise AssertionError(f"{type(model).__name__} differs from the loop")

        def step(model: nn.Module, x: torch.Tensor = x):
            def run_step() -> None:
                model.zero_grad(set_to_none=True)
                model(x).square().mean().backward()

            return run_step

        times = interleaved_medians(
            {k: step(m) for k, m in variants.items()}, repeats=5 if quick else 20
        )
        base = times["loop + cat"]
        case = f"B={batch}, {streams} streams, bank {bank}, {side}x{side}"
        for name, model in variants.items():
            params = sum(p.numel() for p in model.parameters())
            rows.append(
                (case, name, params, times[name], times[name] / base, peak_tensor_mib(step(model)))
            )
    return (
        "Stream sharing, forward + backward, median of interleaved runs; memory: peak of live "
        "tensor bytes during one step (profiler allocator events). The untied grouped conv "
        "(more parameters) shows what the grouped kernel itself costs\n"
        + table(("case", "variant", "params", "ms", "vs loop", "peak MiB"), rows)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small case, fewer repeats")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(run(args.quick))


if __name__ == "__main__":
    main()
