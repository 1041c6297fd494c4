"""N input streams through one shared filter bank, outputs kept apart.

As asked in https://discuss.pytorch.org/t/convolutional-layers-with-shared-weights-for-each-input-channel/36172.

The question applies one ``Conv1d(1, F, k)`` to each of N input streams in a Python loop and
concatenates the results. tietorch writes the same layer as one grouped convolution,
``Conv1d(N, N*F, k, groups=N)``, whose N groups are tied to be equal with
``ShareAcrossGroups(N)`` on the weight and on the bias. The script checks that both give the
same output with the same number of trainable parameters, and measures one training step of
each (forward + backward): median time of interleaved runs, and the peak of live tensor memory.

It also runs the cross-tensor form (N separate branch modules tied by ``tie_tensors``, as
branches of a bigger model would be) and, for reference, the third exact way to share a filter
bank across streams, folding the streams into the batch:
``conv(x.reshape(B*N, 1, L)).reshape(B, N*F, L)``. That needs no tie at all; the grouped form is
the one to use when the sharing is only part of the story (other ties, per-stream biases, an
ordinary ``Conv1d`` module for export). ``tietorch.fast_forward`` gives the grouped layer that
fold as its forward (the rule ``fold-groups``, found from the tie's layout), so the tied layer
runs as fast as the hand-written fold and stays one ordinary ``Conv1d`` with one filter bank.

Run: ``python examples/streams.py [--quick]``; exits non-zero if a check fails.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch
from _checks import check, setup, verdict
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

import tietorch


class LoopAndCat(nn.Module):
    """The question's version: one single-channel conv applied to each stream in turn."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x[:, i : i + 1]) for i in range(x.shape[1])], dim=1)


class TiedBranches(nn.Module):
    """One conv module per stream (as separate branches of a model would be), all tied to one
    filter bank with ``tie_tensors``: a cross-tensor tie, one free vector for every branch."""

    def __init__(self, conv: nn.Conv1d, streams: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv1d(1, conv.out_channels, conv.kernel_size, padding=conv.padding)
            for _ in range(streams)
        )
        for name in ("weight", "bias"):
            tietorch.tie_tensors([(b, name) for b in self.branches])
            # assigning the owner sets the shared vector (a plain tensor: nn.Module refuses
            # to assign an nn.Parameter over a parametrized attribute)
            setattr(self.branches[0], name, getattr(conv, name).detach())

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([b(x[:, i : i + 1]) for i, b in enumerate(self.branches)], dim=1)


class FoldIntoBatch(nn.Module):
    """The streams moved into the batch dimension, one conv call, and moved back."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        b, n, length = x.shape
        y = self.conv(x.reshape(b * n, 1, length))
        return y.reshape(b, n * y.shape[1], y.shape[2])


def grouped_shared(conv: nn.Conv1d, streams: int) -> nn.Conv1d:
    """A grouped conv with ``streams`` equal groups, starting from ``conv``'s filters."""
    bank, _, k = conv.weight.shape
    grouped = nn.Conv1d(streams, streams * bank, k, padding=conv.padding, groups=streams)
    tietorch.register_tie(grouped, "weight", tietorch.ShareAcrossGroups(streams))
    tietorch.register_tie(grouped, "bias", tietorch.ShareAcrossGroups(streams))
    with torch.no_grad():  # assigning a tied tensor projects it: equal blocks stay as they are
        grouped.weight = conv.weight.repeat(streams, 1, 1)
        grouped.bias = conv.bias.repeat(streams)
    return grouped


def training_step(model: nn.Module, x: Tensor, grad: Tensor) -> Callable[[], None]:
    """One forward + backward with a fixed output gradient; parameter grads reset first."""

    def step() -> None:
        for p in model.parameters():
            p.grad = None
        model(x).backward(grad)

    return step


def median_ms(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median milliseconds per call, variants run round-robin so machine noise hits all alike."""
    for step in steps.values():
        step()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def peak_tensor_mib(step: Callable[[], None]) -> float:
    """Peak of the live-tensor total during ``step``, above the level before it, in MiB.

    Measured from the PyTorch profiler's allocator events (``profile_memory=True``): every
    tensor allocation and free during the step, summed in time order. Tensors alive before the
    step (input, parameters, output gradient) are not counted; library scratch memory outside
    tensors (oneDNN, BLAS) is not seen.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    try:  # the per-event allocator records are not public API: fail soft if they move
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:
        return float("nan")
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def main(argv: list[str] | None = None) -> int:
    quick = setup(argv, __doc__)
    batch, streams, bank, length, k = (8, 8, 8, 256, 9) if quick else (32, 16, 16, 512, 9)
    repeats = 5 if quick else 30

    conv = nn.Conv1d(1, bank, k, padding=k // 2)
    loop = LoopAndCat(conv)
    grouped = grouped_shared(conv, streams)
    fold = FoldIntoBatch(conv)
    fast = grouped_shared(conv, streams)
    report = tietorch.fast_forward(fast)  # the groups folded into the batch, found from the tie
    print(report)
    models: dict[str, nn.Module] = {
        "loop and cat": loop,
        "grouped + ShareAcrossGroups": grouped,
        "... + fast_forward": fast,
        "fold streams into batch": fold,
        "N branches + tie_tensors": TiedBranches(conv, streams),
    }
    print(f"x: {batch} x {streams} streams x {length}; shared bank: {bank} filters of width {k}")

    x = torch.randn(batch, streams, length)
    with torch.no_grad():
        outputs = {name: m(x) for name, m in models.items()}
    reference = outputs["loop and cat"]
    check(
        "grouped output == loop-and-cat output (allclose)",
        torch.allclose(outputs["grouped + ShareAcrossGroups"], reference, atol=1e-5),
    )
    check("fast_forward folds the groups", [row.rule for row in report] == ["fold-groups"])
    check(
        "fast_forward output == loop-and-cat output (allclose)",
        torch.allclose(outputs["... + fast_forward"], reference, atol=1e-5),
    )
    check(
        "fold output == loop-and-cat output (allclose)",
        torch.allclose(outputs["fold streams into batch"], reference, atol=1e-5),
    )
    check(
        "tied branches output == loop-and-cat output (allclose)",
        torch.allclose(outputs["N branches + tie_tensors"], reference, atol=1e-5),
    )
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    check(
        f"same trainable parameter count ({counts['loop and cat']})",
        len(set(counts.values())) == 1,
    )
    w = grouped.weight
    check("the groups are equal", all(torch.equal(block, w[:bank]) for block in w.split(bank)))

    grad = torch.randn_like(reference)
    steps = {name: training_step(m, x, grad) for name, m in models.items()}
    times = median_ms(steps, repeats)
    memory = {name: peak_tensor_mib(step) for name, step in steps.items()}
    print(f"One training step (forward + backward), median of {repeats} interleaved runs;")
    print("peak memory = peak of live tensor bytes during the step (torch.profiler allocator")
    print("events, profile_memory=True), above what was allocated before it:")
    print(f"  {'variant':30s} {'params':>7s} {'ms':>8s} {'peak MiB':>9s}")
    for name in models:
        print(f"  {name:30s} {counts[name]:7d} {times[name]:8.2f} {memory[name]:9.2f}")
    output_mib = reference.numel() * reference.element_size() / 2**20
    print(f"  (the output alone is {output_mib:.2f} MiB)")

    # Training keeps the groups equal: a few SGD steps on the tied model.
    opt = torch.optim.SGD(grouped.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        grouped(x).square().mean().backward()
        opt.step()
    w, b = grouped.weight, grouped.bias
    check(
        "after training the groups are still exactly equal",
        all(torch.equal(block, w[:bank]) for block in w.split(bank))
        and all(torch.equal(block, b[:bank]) for block in b.split(bank)),
    )

    return verdict()


if __name__ == "__main__":
    sys.exit(main())
