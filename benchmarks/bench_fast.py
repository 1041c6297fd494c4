"""Ties that cut compute: ``tietorch.fast_forward`` against the gathered tied layer and the plain
untied layer of the same shape.

Each row is a training step's forward + backward (input without gradient), the median of
interleaved runs; every fast path is first checked equal to the gathered path. Memory: peak of
live tensor bytes during one step. Run: ``python benchmarks/bench_fast.py [--quick]`` (or
``python -m benchmarks``).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tietorch as tt
from benchmarks._common import interleaved_medians, peak_tensor_mib, table
from benchmarks.bench_streams import LoopAndCat


def _step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    return run


def _fast_copy(tied: nn.Module) -> tuple[nn.Module, str]:
    fast = copy.deepcopy(tied)
    report = tt.fast_forward(fast)
    rules = ", ".join(sorted({row.rule for row in report})) or "none (gathered)"
    return fast, rules


def _case(
    name: str, variants: dict[str, nn.Module], x: torch.Tensor, repeats: int, base: str
) -> list[tuple[object, ...]]:
    reference = variants["gathered (tied)"](x)
    for label, model in variants.items():
        if "plain" in label:
            continue
        error = (model(x) - reference).abs().max().item()
        if error > 1e-3 * max(reference.abs().max().item(), 1.0):
            raise AssertionError(f"{name}: {label} differs from the gathered path by {error:.3g}")
    times = interleaved_medians({k: _step(m, x) for k, m in variants.items()}, repeats)
    rows: list[tuple[object, ...]] = []
    for label, model in variants.items():
        rows.append(
            (
                name,
                label,
                sum(p.numel() for p in model.parameters()),
                times[label],
                times[base] / times[label],
                peak_tensor_mib(_step(model, x)),
            )
        )
    return rows


def _conv_case(
    c_in: int, c_out: int, batch: int, side: int, repeats: int
) -> list[tuple[object, ...]]:
    torch.manual_seed(0)
    plain = nn.Conv2d(c_in, c_out, 3, padding=1)
    tied = copy.deepcopy(plain)
    tt.register_tie(tied, "weight", tt.ShareAlong(1))
    fast, rule = _fast_copy(tied)
    x = torch.randn(batch, c_in, side, side)
    name = f"ShareAlong(1) Conv2d {c_in}->{c_out} 3x3, B={batch}, {side}^2"
    variants = {"plain Conv2d (untied)": plain, "gathered (tied)": tied, f"fast: {rule}": fast}
    return _case(name, variants, x, repeats, "gathered (tied)")


def _linear_case(tie: tt.Tie, n: int, batch: int, repeats: int) -> list[tuple[object, ...]]:
    torch.manual_seed(0)
    tied = nn.Linear(n, n)
    tt.register_tie(tied, "weight", tie)
    fast, rule = _fast_copy(tied)
    x = torch.randn(batch, n)
    variants = {"gathered (tied)": tied, f"fast: {rule}": fast}
    return _case(f"{tie!r} Linear n={n}, B={batch}", variants, x, repeats, "gathered (tied)")


def _streams_case(
    streams: int, bank: int, batch: int, side: int, repeats: int
) -> list[tuple[object, ...]]:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, bank, 3)
    tied = nn.Conv2d(streams, streams * bank, 3, groups=streams)
    tt.register_tie(tied, "weight", tt.ShareAcrossGroups(streams))
    tt.register_tie(tied, "bias", tt.ShareAcrossGroups(streams))
    tied.weight = conv.weight.detach().repeat(streams, 1, 1, 1)
    tied.bias = conv.bias.detach().repeat(streams)
    fast, rule = _fast_copy(tied)
    x = torch.randn(batch, streams, side, side)
    plain = nn.Conv2d(streams, streams * bank, 3, groups=streams)
    variants = {
        "loop + cat": LoopAndCat(conv),
        "plain grouped Conv2d (untied)": plain,
        "gathered (tied)": tied,
        f"fast: {rule}": fast,
    }
    name = f"{streams} streams, bank {bank}, B={batch}, {side}^2"
    return _case(name, variants, x, repeats, "gathered (tied)")


def _deepsets() -> tt.Tie:
    # One value on the diagonal, one elsewhere: a DeepSets layer over a set of n features.
    return tt.Tie.from_key(lambda i, j: (i == j).long())


def run(quick: bool) -> str:
    repeats = 5 if quick else 15
    rows: list[tuple[object, ...]] = []
    rows += _conv_case(64, 64, 32 if not quick else 8, 32, repeats)
    if not quick:
        rows += _conv_case(256, 64, 8, 32, repeats)
    sizes = (256, 2048) if quick else (64, 128, 256, 512, 1024, 2048, 4096, 8192)
    for batch in (1, 256):  # the rule must never lose to the gathered path, at any n
        for n in sizes:
            rows += _linear_case(tt.Circulant(), n, batch, max(3, repeats // (1 + n // 2048)))
    for tie in (tt.Toeplitz(), tt.Hankel()):
        for n in (256, 1024) if quick else (256, 512, 1024, 4096):
            rows += _linear_case(tie, n, 256, max(3, repeats // (1 + n // 2048)))
    rows += _linear_case(_deepsets(), 1024, 256, repeats)
    rows += _streams_case(8, 16, 32, 32, repeats)
    return (
        "fast_forward: forward + backward, median ms of interleaved runs; 'speed-up' = the "
        "gathered tied layer's time / this row's; peak MiB: live tensors during one step\n"
        + table(("case", "variant", "params", "ms", "speed-up", "peak MiB"), rows)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cases, fewer repeats")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(run(args.quick))


if __name__ == "__main__":
    main()
