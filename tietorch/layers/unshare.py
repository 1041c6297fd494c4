"""``unshare``: turn an existing convolution into the equal locally connected layer.

The starting point for letting each location drift away from the shared kernel: the conv's
kernel and bias are copied to every location of a ``LocallyConnected*d`` (or, for a transposed
conv, a ``LocallyConnectedTranspose*d``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import TargetError, TieTypeError
from .locally_connected import (
    LocallyConnected1d,
    LocallyConnected2d,
    LocallyConnected3d,
    _LocallyConnectedNd,
)
from .locally_connected_transpose import (
    LocallyConnectedTranspose1d,
    LocallyConnectedTranspose2d,
    _LocallyConnectedTransposeNd,
)

__all__ = ["unshare"]


def unshare(
    conv: nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.ConvTranspose1d | nn.ConvTranspose2d,
    input_size: int | Sequence[int],
    *,
    implementation: str = "auto",
) -> _LocallyConnectedNd:
    """The locally connected layer equal to ``conv`` on inputs of size ``input_size``.

    Stride, padding (including ``"same"``), dilation and bias are kept (and
    ``output_padding`` for a transposed conv, which gives a ``LocallyConnectedTranspose*d``);
    the conv's kernel (and bias) is copied to every location, so the two layers give the same
    output at creation; afterwards every location trains its own copy. Grouped convs
    (depthwise included) keep their groups; transposed ones need ``groups=1``; only zero
    padding (``padding_mode="zeros"``) is supported.

    Example:
        >>> import torch
        >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        >>> lc = unshare(conv, (16, 16))
        >>> x = torch.randn(2, 3, 16, 16)
        >>> torch.allclose(lc(x), conv(x), atol=1e-6)
        True
    """
    classes: list[tuple[type[nn.Module], type[_LocallyConnectedNd]]] = [
        (nn.ConvTranspose2d, LocallyConnectedTranspose2d),
        (nn.ConvTranspose1d, LocallyConnectedTranspose1d),
        (nn.Conv3d, LocallyConnected3d),
        (nn.Conv2d, LocallyConnected2d),
        (nn.Conv1d, LocallyConnected1d),
    ]
    cls = next((c for t, c in classes if isinstance(conv, t)), None)
    if cls is None:
        raise TieTypeError(
            "unshare: expected an nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d or "
            f"nn.ConvTranspose2d, got {type(conv).__name__}"
        )
    if conv.groups != 1 and issubclass(cls, _LocallyConnectedTransposeNd):
        raise TargetError(
            f"unshare: grouped transposed convs are not supported, got groups={conv.groups}"
        )
    if conv.padding_mode != "zeros":
        raise TargetError(
            f"unshare: only zero padding is supported, got padding_mode={conv.padding_mode!r}"
        )
    weight = conv.weight.detach()
    common = dict(
        bias=conv.bias is not None,
        implementation=implementation,
        device=weight.device,
        dtype=weight.dtype,
    )
    if issubclass(cls, _LocallyConnectedTransposeNd):
        assert isinstance(conv, (nn.ConvTranspose1d, nn.ConvTranspose2d))
        layer: _LocallyConnectedNd = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            input_size,
            stride=conv.stride,
            padding=conv.padding,  # type: ignore[arg-type]
            output_padding=conv.output_padding,
            dilation=conv.dilation,
            **common,  # type: ignore[arg-type]
        )
    else:
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            input_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            **common,  # type: ignore[arg-type]
        )
    with torch.no_grad():
        layer.weight.copy_(weight.expand_as(layer.weight))
        if conv.bias is not None and layer.bias is not None:
            layer.bias.copy_(conv.bias.detach().expand_as(layer.bias))
    return layer
