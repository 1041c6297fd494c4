"""One rank of the distributed tests: ``python _distributed_worker.py MODE RANK WORLD PORT OUT``.

Trains a small tied model for a few steps with DDP or FSDP2 (gloo, 127.0.0.1) on this rank's
share of a fixed batch and saves the resulting state, the constraint check and what DDP
broadcasts. ``WORLD=1`` without a mode wrapper is the single-process reference.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import tietorch as tt

STEPS = 4
WORKER = Path(__file__)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1))
    tt.register_tie(net[0], "weight", tt.KernelSymmetry("D4"))
    tt.register_tie(net[2], "weight", tt.SymmetricFlip(sign=-1))
    return net


def transpose(i: torch.Tensor, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return j, i


def make_autoencoder() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 12))
    tt.tie_tensors([(net[0], "weight"), (net[2], "weight")], relation=transpose)
    return net


def make_fast_net() -> nn.Module:
    """A model whose ties have fast_forward rules (segment-sum, fold-groups)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, groups=3)
    )
    tt.register_tie(net[0], "weight", tt.ShareAlong(1))
    tt.register_tie(net[2], "weight", tt.ShareAcrossGroups(3))
    tt.register_tie(net[2], "bias", tt.ShareAcrossGroups(3))
    return net


def fast_constraints_hold(net: nn.Module) -> bool:
    w0, w2 = net[0].weight, net[2].weight.view(3, 2, 2, 3, 3)
    return bool(torch.equal(w0, w0[:, :1].expand_as(w0)) and torch.equal(w2, w2[:1].expand_as(w2)))


def batch(group: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    if group:
        x = torch.randn(8, 12, generator=gen)
        return x, x
    return torch.randn(8, 3, 8, 8, generator=gen), torch.randn(8, 6, 8, 8, generator=gen)


def constraints_hold(net: nn.Module, group: bool) -> bool:
    w0, w2 = net[0].weight, net[2].weight
    if group:
        return bool(torch.equal(w2, w0.T))
    return bool(
        torch.equal(w0, w0.rot90(1, (2, 3)))
        and torch.equal(w0, w0.flip(3))
        and torch.equal(w2, -w2.transpose(0, 1).flip(2, 3))
    )


def main(mode: str, rank: int, world: int, port: int, out: str) -> None:
    fast = mode.endswith("+fast")  # fast_forward(net) before training
    mode = mode.removesuffix("+fast")
    fast_net = mode.endswith("-fastnet")  # make_fast_net(): ties that fast_forward rewrites
    mode = mode.removesuffix("-fastnet")
    group = mode.endswith("-group")  # a tied autoencoder: one free vector, two weights
    mode = mode.removesuffix("-group")
    if mode != "single":
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    build = make_autoencoder if group else make_fast_net if fast_net else make_model
    if mode == "fsdp_meta":  # the large-model flow: declare on meta, shard, materialize, load
        with torch.device("meta"):
            net = build()
    else:
        net = build()
    if fast:
        assert len(tt.fast_forward(net)) == 2
    model: nn.Module = net
    synced_buffers = -1
    if mode == "ddp":
        model = nn.parallel.DistributedDataParallel(net)
        synced_buffers = sum(b.numel() * b.element_size() for b in model.modules_buffers)
    elif mode.startswith("fsdp"):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        # "fsdp_split" puts the two members of a group in separate units: refused clearly.
        units = (net[0], net[2]) if not group or mode == "fsdp_split" else ()
        for layer in units:
            fully_shard(layer, mesh=mesh)
        fully_shard(net, mesh=mesh)
        if mode == "fsdp_meta":
            from torch.distributed.tensor import DTensor, distribute_tensor

            net.to_empty(device="cpu")
            shards = net.state_dict()
            full = build().state_dict()  # the weights every rank would read from a checkpoint
            net.load_state_dict(
                {
                    k: distribute_tensor(v, shards[k].device_mesh, shards[k].placements)
                    if isinstance(shards[k], DTensor)
                    else v
                    for k, v in full.items()
                }
            )
    x, y = batch(group)
    x, y = x.chunk(world)[rank], y.chunk(world)[rank]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    except RuntimeError as error:
        torch.save({"error": str(error)}, out)
        return
    if mode.startswith("fsdp"):
        from torch.distributed.tensor import DTensor

        state = {
            k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in net.state_dict().items()
        }
        for unit in units or (net,):  # gather the free vectors to check the ties
            unit.unshard()
        holds = constraints_hold(net, group)
    else:
        holds = fast_constraints_hold(net) if fast_net else constraints_hold(net, group)
        state = net.state_dict()
    torch.save({"state": state, "holds": holds, "synced_buffers": synced_buffers}, out)
    if mode != "single":
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(mode: str, tmp_path: Path, world: int = 2) -> list[dict]:
    """Run `world` ranks of this script concurrently; return what each saved."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                mode,
                str(r),
                str(world),
                str(port),
                str(tmp_path / f"{mode}{r}.pt"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    return [torch.load(tmp_path / f"{mode}{r}.pt", weights_only=True) for r in range(world)]


if __name__ == "__main__":
    mode, rank, world, port, out = sys.argv[1:]
    main(mode, int(rank), int(world), int(port), out)
    # The result is saved. Skip interpreter teardown: gloo/FSDP background threads sometimes
    # abort it ("terminate called without an active exception"), which would fail the rank.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
