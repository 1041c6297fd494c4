"""Core benchmark: the cost of a tie in a training step, and layout build time at scale.

Run: ``python benchmarks/bench_core.py [--quick]`` (or ``python -m benchmarks``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tietorch as tt
from benchmarks._common import interleaved_medians, table, training_step


class RedundantWorkaround(nn.Module):
    """The workaround in a forum question (https://discuss.pytorch.org/t/intra-layer-tied-weights-in-a-convolution-layer/15514):
    a full W0, symmetrized in every forward (redundant parameters)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.w0 = nn.Parameter(conv.weight.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.w0 + self.w0.flip(2, 3).permute(1, 0, 2, 3)) / 2
        return F.conv2d(x, w, self.bias, padding=1)


def bench_training(repeats: int) -> str:
    torch.manual_seed(0)
    x = torch.randn(32, 64, 32, 32)
    plain = nn.Conv2d(64, 64, 3, padding=1)
    tied = nn.Conv2d(64, 64, 3, padding=1)
    tt.register_tie(tied, "weight", tt.SymmetricFlip())
    workaround = RedundantWorkaround(plain)
    models = {
        "plain Conv2d": plain,
        "tied (SymmetricFlip)": tied,
        "workaround (W0+W0.T.flip)/2": workaround,
    }
    train = interleaved_medians({k: training_step(m, x) for k, m in models.items()}, repeats)

    def evaluate(model: nn.Module):
        def run() -> None:
            with torch.no_grad():
                model(x)

        return run

    for m in (plain, tied, workaround):
        m.eval()
    evals = interleaved_medians(
        {
            "plain Conv2d": evaluate(plain),
            "tied, uncached": evaluate(tied),
            "workaround (W0+W0.T.flip)/2": evaluate(workaround),
        },
        repeats,
    )
    # An eval loop runs inside one parametrize.cached() block: the gather runs once, not per
    # batch. Measured in its own interleaved run against plain Conv2d.
    with parametrize.cached():
        cached = interleaved_medians(
            {"plain Conv2d": evaluate(plain), "tied, parametrize.cached()": evaluate(tied)},
            repeats,
        )
    evals["tied, parametrize.cached() (own run)"] = (
        cached["tied, parametrize.cached()"] / cached["plain Conv2d"] * evals["plain Conv2d"]
    )
    base_t, base_e = train["plain Conv2d"], evals["plain Conv2d"]
    rows = [("train step", name, ms, ms / base_t) for name, ms in train.items()]
    rows += [("eval forward", name, ms, ms / base_e) for name, ms in evals.items()]
    free = sum(p.numel() for p in tied.parameters())
    return (
        "Conv2d(64, 64, 3, padding=1), x: 32x64x32x32, SGD; median of interleaved runs\n"
        + table(("mode", "variant", "ms", "vs plain"), rows)
        + f"\nparameters: plain {sum(p.numel() for p in plain.parameters()):,}, tied {free:,}, "
        f"workaround {sum(p.numel() for p in workaround.parameters()):,}"
    )


def layout_cases(n: int):
    nf = round((n / 9) ** 0.5)
    k = 7
    yield "SymmetricFlip", tt.SymmetricFlip(), (nf, nf, 3, 3)
    yield "SymmetricFlip(sign=-1)", tt.SymmetricFlip(sign=-1), (nf, nf, 3, 3)
    yield (
        "cyclic shift, axis 4096",
        tt.Tie.from_relation(lambda r, c: (r, c - 1)),
        (max(n // 4096, 1), 4096),
    )
    yield "KernelSymmetry('D4'), 7x7", tt.KernelSymmetry("D4"), (max(n // (k * k), 1), k, k)
    yield "ShareAlong(1)", tt.ShareAlong(1), (nf, nf, 3, 3)


def bench_layouts(sizes: list[int], repeats: int) -> str:
    rows = []
    for n in sizes:
        for name, tie, shape in layout_cases(n):
            times = []
            for _ in range(repeats if n < 10**7 else 1):
                tie.__dict__.pop("_layout_cache", None)  # time the solve, not the cache
                start = time.perf_counter()
                layout = tie.layout(shape)
                times.append(time.perf_counter() - start)
            times.sort()
            entries = layout.numel
            rows.append(
                (
                    f"{entries:,}",
                    name,
                    layout.n_free,
                    times[len(times) // 2] * 1e3,
                    times[len(times) // 2] * 1e9 / entries,
                )
            )
    return "Layout build (classes of every entry), median\n" + table(
        ("entries", "tie", "n_free", "ms", "ns/entry"), rows
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no 10^7 layouts")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(bench_training(repeats=10 if args.quick else 40))
    print()
    sizes = [10**5, 10**6] if args.quick else [10**5, 10**6, 10**7]
    print(bench_layouts(sizes, repeats=3))


if __name__ == "__main__":
    main()
