"""Locally connected layers: speed (forward+backward) and peak memory against nn.Conv2d, tf_keras'
LocallyConnected2D (implementation 1 under tf.function, run in the same process where tf_keras
is installed), the forum snippet (https://discuss.pytorch.org/t/locally-connected-layers/26979)
and plain unfold+einsum; tiled layers (TileShare) and the transposed layers.

Run: ``python benchmarks/bench_locally_connected.py [--quick]`` (or ``python -m benchmarks``).
Keras is measured when ``import tf_keras`` works in the running interpreter (an environment
with torch, tf_keras and TensorFlow); otherwise the run says so and leaves its column out.

Protocol: one training step's forward+backward, ``y.backward(g)``
with a fixed random ``g``, parameter gradients reset to None before each step; the input does
not require grad (a first layer) except in the "+grad x" case. All variants of a case run
interleaved round-robin in one process; the figures are medians in ms. Peak memory is measured
per case in a fresh subprocess, two ways: "RSS" is the rise of the process's peak resident
memory during one step above its resident memory just before it (``/proc/self/clear_refs``
resets the peak, ``malloc_trim`` first hands freed heap back, one warm-up step excluded), so it
includes library scratch (oneDNN, MKL); "tensors" is the peak of the live-tensor total during
the step from the PyTorch profiler's allocator events (``profile_memory=True``). Inputs,
parameters and ``g`` exist before the step and are not counted; the LC kernels' cached scratch
buffers are released before the step, so they are counted.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.utils import _pair

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _keras_lc
from benchmarks._common import interleaved_medians, peak_tensor_mib, table
from tietorch import TileShare
from tietorch.layers import LocallyConnected2d, LocallyConnectedTranspose2d
from tietorch.layers import _lc_function as _lc

# name: (batch, in_channels, out_channels, size, kernel, stride, input requires grad)
CASES = {
    "main": (32, 3, 64, 32, 3, 1, False),
    "main +grad x": (32, 3, 64, 32, 3, 1, True),
    "mid": (32, 16, 32, 32, 3, 1, False),
    "strided k5 s2": (32, 16, 32, 32, 5, 2, False),
    "batch 256": (256, 3, 64, 32, 3, 1, False),
    "batch 1": (1, 3, 64, 32, 3, 1, False),
}
# (repeats default, repeats --quick); the forum snippet is skipped where it would need GBs
REPEATS = {
    "main": (40, 12),
    "main +grad x": (20, 0),
    "mid": (12, 4),
    "strided k5 s2": (20, 0),
    "batch 256": (8, 0),
    "batch 1": (40, 0),
}
FORUM_MAX_PRODUCT = 600 << 20  # bytes of the snippet's broadcast product we accept to run


class ForumLocallyConnected2d(nn.Module):
    """The forum answer (module docstring), verbatim but for formatting and one unpacking."""

    def __init__(self, in_channels, out_channels, output_size, kernel_size, stride, bias=False):
        super().__init__()
        output_size = _pair(output_size)
        self.weight = nn.Parameter(
            torch.randn(
                1, out_channels, in_channels, output_size[0], output_size[1], kernel_size**2
            )
        )
        if bias:
            self.bias = nn.Parameter(torch.randn(1, out_channels, output_size[0], output_size[1]))
        else:
            self.register_parameter("bias", None)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)

    def forward(self, x):
        kh, kw = self.kernel_size
        dh, dw = self.stride
        x = x.unfold(2, kh, dh).unfold(3, kw, dw)
        x = x.contiguous().view(*x.size()[:-2], -1)
        out = (x.unsqueeze(1) * self.weight).sum([2, -1])
        if self.bias is not None:
            out += self.bias
        return out


#: the variants that get their input (and output gradient) in channels-last memory
CHANNELS_LAST = ("nn.Conv2d, channels_last x", "LC auto, channels_last x")
KERAS = "tf_keras impl 1, tf.function"


def build(case: str, channels_last_copy: bool = True):
    """(x, g, {variant: module}) for a case; every module maps x to g's shape. The
    channels-last variants are separate modules with the same weights (one module run in both
    layouts makes oneDNN re-create its conv primitive on every switch)."""
    batch, cin, cout, size, k, stride, grad_x = CASES[case]
    torch.manual_seed(0)
    x = torch.randn(batch, cin, size, size, requires_grad=grad_x)
    conv = nn.Conv2d(cin, cout, k, stride=stride)
    out = (size - k) // stride + 1
    g = torch.randn(batch, cout, out, out)
    mods: dict[str, nn.Module] = {"nn.Conv2d": conv}
    product = batch * cout * cin * out * out * k * k * 4
    if product <= FORUM_MAX_PRODUCT:
        mods["forum snippet"] = ForumLocallyConnected2d(cin, cout, out, k, stride, True)
    mods["unfold+einsum (impl unfold)"] = LocallyConnected2d(
        cin, cout, k, size, stride=stride, implementation="unfold"
    )
    lc = LocallyConnected2d(cin, cout, k, size, stride=stride, implementation="batched")
    mods["LC batched"] = lc
    mods["LC chunked"] = copy.deepcopy(lc)
    mods["LC chunked"].implementation = "chunked"
    if channels_last_copy:
        mods["nn.Conv2d, channels_last x"] = copy.deepcopy(conv)
        mods["LC auto, channels_last x"] = copy.deepcopy(lc)
        mods["LC auto, channels_last x"].implementation = "auto"
    return x, g, mods


def step_fn(module: nn.Module, x: torch.Tensor, g: torch.Tensor, channels_last: bool = False):
    params = list(module.parameters())
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(x.requires_grad)
        g = g.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        module(x).backward(g)

    return step


def auto_plan(case: str) -> tuple[str, int | None, int]:
    """What "auto" runs on a case: the implementation, rows per chunk and output rows."""
    batch, cin, cout, size, k, stride, _ = CASES[case]
    layer = LocallyConnected2d(cin, cout, k, size, stride=stride)
    name, rows = layer._plan(batch, torch.float32)
    return name, rows, layer.output_size[0]


def auto_choice(case: str) -> str:
    name, rows, out_rows = auto_plan(case)
    return name if rows is None else f"{name} ({rows} of {out_rows} rows/chunk)"


# ------------------------------------------------------------------------------ memory


def _rss_peak_mb(step) -> float | None:
    """Rise of peak RSS during ``step`` above the RSS just before it, in MiB (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return None

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    before = status("VmRSS:")
    step()
    return (status("VmHWM:") - before) / 2**20


def memory_worker(case: str) -> None:
    """Runs in a fresh process: prints {variant: [rss MiB, tensor MiB, gradients MiB]} as
    JSON (the parameters' gradients are part of the step's tensors; the issue's bound is on
    what a layer needs beyond its own weight and weight gradient)."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    x, g, mods = build(case)
    result = {}
    for name, module in mods.items():
        step = step_fn(module, x, g, name in CHANNELS_LAST)
        step()  # warm-up: one-time library setup is not the layer's memory
        grads = sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20
        for p in module.parameters():
            p.grad = None
        _lc.free_workspace()  # the LC kernels' reused scratch counts as the step's memory
        rss = _rss_peak_mb(step)
        for p in module.parameters():
            p.grad = None
        _lc.free_workspace()
        result[name] = [rss, peak_tensor_mib(step), grads]
    print(json.dumps(result))


def measure_memory(case: str) -> dict[str, list[float | None]]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-worker", case],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ main


# transposed: (batch, in_channels, out_channels, input size, kernel, stride, repeats)
TRANSPOSE_CASES = {
    "transposed main (64->3)": (32, 64, 3, 30, 3, 1, 20),
    "transposed mid (32->16)": (32, 32, 16, 30, 3, 1, 10),
    "transposed k4 s2 (32->16)": (32, 32, 16, 16, 4, 2, 10),
}


def run_transposed(quick: bool) -> str:
    """LocallyConnectedTranspose2d against nn.ConvTranspose2d (fwd+bwd, no input gradient)."""
    rows = []
    for case, (b, cin, cout, size, k, s, repeats) in TRANSPOSE_CASES.items():
        if quick and "main" not in case:
            continue
        torch.manual_seed(0)
        conv = nn.ConvTranspose2d(cin, cout, k, stride=s, padding=k // 2 if s > 1 else 0)
        mods: dict[str, nn.Module] = {"nn.ConvTranspose2d": conv}
        # (implementation "unfold", the plain-autograd fallback, is left out: its large
        # temporaries disturb the timings of the variants run after it in the same round)
        mods["LCT auto"] = LocallyConnectedTranspose2d(
            cin, cout, k, size, stride=s, padding=conv.padding
        )
        x = torch.randn(b, cin, size, size)
        g = torch.randn_like(conv(x))
        times = interleaved_medians(
            {n: step_fn(m, x, g) for n, m in mods.items()}, max(4, repeats // (3 if quick else 1))
        )
        for name, ms in times.items():
            rows.append([case, name, ms, ms / times["nn.ConvTranspose2d"]])
    return table(["case", "variant", "ms", "x ConvTranspose2d"], rows)


def run(quick: bool, keras: bool) -> tuple[str, dict[str, dict[str, float]]]:
    """The per-variant table, and each case's timings (for the summary)."""
    rows = []
    notes = []
    all_times = {}
    for case in CASES:
        repeats = REPEATS[case][1 if quick else 0]
        if repeats == 0:
            continue
        x, g, mods = build(case)
        steps = {n: step_fn(m, x, g, n in CHANNELS_LAST) for n, m in mods.items()}
        b, cin, cout, size, k, s, grad_x = CASES[case]
        if keras and case in KERAS_CASES:
            steps[KERAS] = _keras_lc.keras_step(mods["LC batched"], x, g, torch.get_num_threads())
        times = interleaved_medians(steps, repeats)
        all_times[case] = times
        mem = measure_memory(case) if (not quick or case == "main") else {}
        conv = times["nn.Conv2d"]
        forum = times.get("forum snippet")
        for name, ms in times.items():
            rss, tensors, grads = mem.get(name, [None, None, None])
            beyond = None if tensors is None or grads is None else tensors - grads
            rows.append(
                [
                    case,
                    name,
                    ms,
                    ms / conv,
                    f"{forum / ms:.1f}x" if forum else "-",
                    "-" if rss is None else round(rss, 1),
                    "-" if tensors is None else round(tensors, 1),
                    "-" if beyond is None else round(beyond, 1),
                ]
            )
        notes.append(
            f"{case}: B={b}, {cin}->{cout}, {size}x{size}, k={k}, stride={s}"
            f"{', input needs a gradient' if grad_x else ''}; auto picks {auto_choice(case)}"
        )
    header = [
        "case", "variant", "ms", "x Conv2d", "vs forum", "RSS MiB", "tensors MiB",
        "beyond W+grad MiB",
    ]  # fmt: skip
    return table(header, rows) + "\n" + "\n".join(notes), all_times


#: the cases Keras runs (implementation 1 accepts only padding="valid")
KERAS_CASES = ("main", "mid")


def summary(all_times: dict[str, dict[str, float]], keras: bool) -> str:
    """The issue's ratios, per case: against Keras graph mode and nn.Conv2d (each in its own
    input layout and in NCHW), and NCHW against channels-last input."""
    rows = []
    for case in KERAS_CASES:
        t = all_times.get(case)
        if t is None:
            continue
        last = t["LC auto, channels_last x"]
        auto_nchw = t[f"LC {auto_plan(case)[0]}"]  # what "auto" runs on NCHW
        keras_ms = t.get(KERAS)
        rows.append(
            [
                case,
                auto_nchw,
                last,
                t["nn.Conv2d"],
                t["nn.Conv2d, channels_last x"],
                "-" if keras_ms is None else keras_ms,
                "-" if keras_ms is None else f"{keras_ms / auto_nchw:.2f}",
                "-" if keras_ms is None else f"{keras_ms / last:.2f}",
                f"{auto_nchw / t['nn.Conv2d']:.2f}",
                f"{last / t['nn.Conv2d, channels_last x']:.2f}",
                f"{auto_nchw / last:.2f}",
            ]
        )
    header = [
        "case", "LC NCHW ms", "LC ch-last ms", "Conv2d ms", "Conv2d ch-last ms", "Keras ms",
        "Keras/LC NCHW", "Keras/LC ch-last", "LC/Conv2d NCHW", "LC/Conv2d ch-last",
        "NCHW/ch-last",
    ]  # fmt: skip
    text = table(header, rows)
    if not keras:
        text += "\ntf_keras is not installed in this interpreter: Keras was not measured."
    return text


# tiled: (batch, in_channels, out_channels, size, kernel, tile, repeats default, --quick)
TILED_CASES = {
    "mid, TileShare(2)": (32, 16, 32, 32, 3, 2, 12, 6),
    "main, TileShare(2)": (32, 3, 64, 32, 3, 2, 12, 0),
    "mid, TileShare(4)": (32, 16, 32, 32, 3, 4, 12, 0),
}


def run_tiled(quick: bool) -> str:
    """A TileShare(t) layer: "auto" (one strided conv per tile) against the GEMM kernels on
    the same tied weight (what "auto" ran before) and a plain conv of the same shape."""
    rows = []
    for case, (b, cin, cout, size, k, tile, repeats, quick_repeats) in TILED_CASES.items():
        if quick and not quick_repeats:
            continue
        torch.manual_seed(0)
        x = torch.randn(b, cin, size, size)
        auto = LocallyConnected2d(cin, cout, k, size, tie=TileShare(tile))
        gemm = copy.deepcopy(auto)
        gemm.implementation = "chunked"
        mods = {"nn.Conv2d": nn.Conv2d(cin, cout, k), "LC auto (convs)": auto, "LC GEMM": gemm}
        g = torch.randn_like(mods["nn.Conv2d"](x))
        times = interleaved_medians(
            {n: step_fn(m, x, g) for n, m in mods.items()}, quick_repeats if quick else repeats
        )
        for name, ms in times.items():
            rows.append([case, name, ms, ms / times["nn.Conv2d"], times["LC GEMM"] / ms])
    return table(["case", "variant", "ms", "x Conv2d", "speed-up vs GEMM"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="main and mid cases only, ~20 s")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.memory_worker:
        memory_worker(args.memory_worker)
        return
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"chunk budget {_lc.SCRATCH_BUDGET >> 20} MiB"
    )
    keras = _keras_lc.available()
    if keras:
        print(_keras_lc.version())
    per_variant, all_times = run(args.quick, keras)
    print(per_variant)
    print()
    print(summary(all_times, keras))
    print()
    print(run_tiled(args.quick))
    print()
    print(run_transposed(args.quick))


if __name__ == "__main__":
    main()
