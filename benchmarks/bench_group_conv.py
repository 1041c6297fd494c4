"""Group convolutions: a p4 group conv (``GroupConv``) training step against the plain conv of
the same size, and against e2cnn's ``R2Conv`` of the same fields where e2cnn is installed.

Questions: what does the tie cost per step (the filter gather, its backward) over an ``nn.Conv2d``
of the same channels (target <= 1.05x), and how does a group conv's parameter count compare with
e2cnn's band-limited basis? Regular -> regular p4 conv, 16 fields (64 channels), 3x3, "same"
padding, 32 x 32 input, forward + backward + SGD step, median of interleaved runs. e2cnn is never
a dependency of the suite: when it does not import, the table says so.

Run: ``python -m benchmarks.bench_group_conv [--quick]``.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

import tietorch

from ._common import interleaved_medians, table, training_step


def _e2cnn_conv(fields: int) -> nn.Module | str:
    """e2cnn's R2Conv between ``fields`` regular p4 fields (3x3), or why there is none."""
    try:
        from e2cnn import gspaces
        from e2cnn import nn as enn
    except Exception as error:  # any import failure: not usable here
        return f"e2cnn not importable here ({type(error).__name__}: {error})"
    space = gspaces.Rot2dOnR2(N=4)
    field = enn.FieldType(space, fields * [space.regular_repr])

    class Wrapped(nn.Module):  # takes and returns plain tensors, like the others
        def __init__(self) -> None:
            super().__init__()
            self.conv = enn.R2Conv(field, field, 3, padding=1)
            self.field = field

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(enn.GeometricTensor(x, self.field)).tensor

    return Wrapped()


def main(argv: list[str] | None = None) -> None:
    quick = "--quick" in (sys.argv[1:] if argv is None else argv)
    fields, batch, size = 16, (4 if quick else 16), 32
    channels = fields * 4
    torch.manual_seed(0)
    plain = nn.Conv2d(channels, channels, 3, padding=1)
    tied = nn.Conv2d(channels, channels, 3, padding=1)
    tie = tietorch.GroupConv("p4", "regular", "regular")
    tietorch.register_tie(tied, "weight", tie)
    tietorch.register_tie(tied, "bias", tie)
    models: dict[str, nn.Module] = {"plain Conv2d": plain, "GroupConv p4 (tietorch)": tied}
    e2 = _e2cnn_conv(fields)
    if isinstance(e2, nn.Module):
        models["e2cnn R2Conv"] = e2
    x = torch.randn(batch, channels, size, size)
    times = interleaved_medians(
        {k: training_step(m, x) for k, m in models.items()}, 5 if quick else 21
    )
    rows = [
        (k, sum(p.numel() for p in models[k].parameters()), v, v / times["plain Conv2d"])
        for k, v in times.items()
    ]
    print(
        f"p4 regular -> regular conv, {fields} fields ({channels} channels), 3x3, batch {batch}, "
        f"{size}x{size}: training step (median ms, interleaved)"
    )
    print(table(("variant", "params", "ms", "/ plain"), rows))
    if isinstance(e2, str):
        print(e2)
    print(
        "tietorch keeps one parameter per orbit of the kernel entries (16*16*4*9 = 9,216); "
        "e2cnn's R2Conv expands a band-limited steerable basis (fewer parameters: the high "
        "frequencies of a 3x3 kernel are dropped) every training step."
    )


if __name__ == "__main__":
    main()
