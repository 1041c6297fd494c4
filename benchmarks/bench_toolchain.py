"""Toolchain benchmark: torch.compile of a tied model, and what DDP re-broadcasts per step.

Run: ``python benchmarks/bench_toolchain.py [--quick]`` (or ``python -m benchmarks``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tietorch as tt
from benchmarks._common import interleaved_medians, table, training_step


def bench_compile(quick: bool) -> str:
    torch.manual_seed(0)
    channels, batch = (32, 16) if quick else (64, 32)
    x = torch.randn(batch, channels, 32, 32)

    def net() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    plain, tied = net(), net()
    tt.register_tie(tied[0], "weight", tt.SymmetricFlip())
    tt.register_tie(tied[2], "weight", tt.KernelSymmetry("D4"))
    variants = {"plain, eager": plain, "tied, eager": tied}
    compile_s = {}
    for name, model in [("plain, compiled", plain), ("tied, compiled", tied)]:
        compiled = torch.compile(model, fullgraph=True)
        start = time.perf_counter()
        training_step(compiled, x)()  # compile outside the timed runs
        compile_s[name] = time.perf_counter() - start
        variants[name] = compiled
    times = interleaved_medians(
        {k: training_step(m, x) for k, m in variants.items()}, repeats=5 if quick else 20
    )
    base = times["plain, eager"]
    rows = [
        (name, ms, ms / base, ms / times["tied, eager"], compile_s.get(name, ""))
        for name, ms in times.items()
    ]
    return (
        f"Training step, 2 x Conv2d({channels}, {channels}, 3) on {batch}x{channels}x32x32; "
        "ties: SymmetricFlip, D4\n"
        + table(("variant", "ms", "vs plain eager", "vs tied eager", "first step s"), rows)
    )


class BufferGather(nn.Module):
    """The naive way: a tie's index map stored as an ordinary (persistent) buffer."""

    def __init__(self, layout: tt.TieLayout) -> None:
        super().__init__()
        self.layout = layout
        self.register_buffer("index", layout.index.reshape(-1).clone())

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return theta.index_select(0, self.index).view(self.layout.shape)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return self.layout.project(weight)


def ddp_worker(variant: str, rank: int, port: int, steps: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    conv = nn.Conv2d(512, 512, 3, padding=1)
    if variant == "tietorch":
        tt.register_tie(conv, "weight", tt.SymmetricFlip())
    else:
        parametrize.register_parametrization(
            conv, "weight", BufferGather(tt.SymmetricFlip().layout(conv.weight.shape))
        )
    model = nn.parallel.DistributedDataParallel(conv)
    synced = sum(b.numel() * b.element_size() for b in model.modules_buffers)
    x = torch.randn(2, 512, 4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    times = []
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        times.append(time.perf_counter() - start)
    torch.save({"synced": synced, "ms": statistics.median(times[2:]) * 1e3}, out)
    dist.destroy_process_group()


def bench_ddp(quick: bool) -> str:
    rows = []
    steps = 8 if quick else 25
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("tietorch", "index as buffer"):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            outs = [os.path.join(tmp, f"{variant}{r}.pt") for r in range(2)]
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--ddp-worker",
                        variant,
                        str(r),
                        str(port),
                        str(steps),
                        outs[r],
                    ]
                )
                for r in range(2)
            ]
            for proc in procs:
                if proc.wait(timeout=600):
                    raise RuntimeError(f"DDP worker for {variant!r} failed")
            result = torch.load(outs[0], weights_only=True)
            rows.append((variant, result["synced"] / 1e6, result["ms"]))
    base = rows[0][2]
    rows = [(v, mb, ms, ms / base) for v, mb, ms in rows]
    return (
        "DDP (gloo, 2 processes, 1 thread each): Conv2d(512, 512, 3) with SymmetricFlip, "
        "input 2x512x4x4\n"
        + table(("index maps", "MB re-broadcast per step", "ms per step", "vs tietorch"), rows)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    parser.add_argument("--ddp-worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ddp_worker:
        variant, rank, port, steps, out = args.ddp_worker
        ddp_worker(variant, int(rank), int(port), int(steps), out)
        return
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(bench_compile(args.quick))
    print()
    print(bench_ddp(args.quick))


if __name__ == "__main__":
    main()
