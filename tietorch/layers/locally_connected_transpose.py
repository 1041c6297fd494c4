"""The transposed locally connected layers: the adjoints of ``LocallyConnected1d``/``2d``.

``LocallyConnectedTranspose2d`` takes the arguments of ``nn.ConvTranspose2d`` plus
``input_size``, ``LocallyConnectedTranspose1d`` those of ``nn.ConvTranspose1d``. They share the
forward layers' parameter machinery and ``forward`` (``_LocallyConnectedNd``) and run the
adjoint's kernels: the GEMM kernels of the forward layer's input gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._tie import Tie
from . import _lc_function as _lc
from ._arguments import parse_arguments
from .locally_connected import LocallyConnected1d, LocallyConnected2d, _LocallyConnectedNd

__all__ = ["LocallyConnectedTranspose1d", "LocallyConnectedTranspose2d"]


class _LocallyConnectedTransposeNd(_LocallyConnectedNd):
    """The adjoint of a locally connected layer; shares the base's parameter machinery."""

    _tiles_as_convs = False  # tiled transposed layers keep the GEMM kernels

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        input_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | Sequence[Sequence[int]] = 0,
        output_padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        tie: Tie | None = None,
        implementation: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        groups: int = 1,
    ) -> None:
        nn.Module.__init__(self)
        args = parse_arguments(
            type(self).__name__,
            self._n,
            self._conv_name,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=kernel_size,
            input_size=input_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            implementation=implementation,
            output_padding=output_padding,
            groups=groups,
        )
        assert args.output_padding is not None
        self.output_padding = args.output_padding
        # the geometry is the one of the layer this one is the adjoint of: its input is our output
        assert args.geometry.out_size[: self._n] == args.input_size[: self._n]
        # as nn.ConvTranspose: (in, out / groups, *k) at each location
        weight_shape = (*args.input_size, in_channels, out_channels // groups, *args.kernel_size)
        self._build(args, weight_shape, bias, tie, device, dtype)

    def _fan_channels(self) -> int:
        return self.out_channels // self.groups  # as nn.ConvTranspose: its weight's dim 1

    def _gemm_channels(self) -> tuple[int, int]:
        return self.out_channels, self.in_channels  # a transposed layer runs the adjoint's GEMM

    def _unfold_kernel(
        self, x: Tensor, weight: Tensor, bias: Tensor | None, g: _lc.Geometry
    ) -> Tensor:
        return _lc.locally_connected_transpose_unfold(x, weight, bias, g, self.groups)

    def _gemm_kernel(
        self, x: Tensor, weight: Tensor, bias: Tensor | None, g: _lc.Geometry, rows: int | None
    ) -> Tensor:
        return _lc.locally_connected_transpose_gemm(x, weight, bias, g, rows, self.groups)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if any(self.output_padding):
            s += f", output_padding={self.output_padding}"
        return s


_TRANSPOSE_DOC = """
    The adjoint of ``{lc}(out_channels, in_channels, kernel_size, input_size=output_size,
    stride, padding, dilation)``: with the same weight (and no bias),
    ``<y, lc(x)> = <lct(y), x>``. Output size as ``nn.{conv}``:
    ``(input - 1) * stride - pad_before - pad_after + dilation * (kernel - 1) +
    output_padding + 1`` per dim. ``padding`` is an int, a tuple, or per side
    ({per_side}); ``output_padding`` must be smaller than the stride. ``tie`` and
    ``implementation`` as for ``{lc}`` (the same GEMM kernels, run as the layer's input
    gradient); ``TileShare(1)`` makes it ``nn.{conv}`` with a per-channel bias.

    Attributes:
        weight: ``{wshape}``, the layout of the layer it is the adjoint of.
        bias: ``{bshape}`` (one per output location) or None.
        output_size: the number of output locations per spatial dim.
"""


class LocallyConnectedTranspose2d(_LocallyConnectedTransposeNd):
    __doc__ = (
        """A transposed 2-d convolution with unshared weights.
"""
        + _TRANSPOSE_DOC.format(
            lc=LocallyConnected2d.__name__,
            conv="ConvTranspose2d",
            per_side="``((top, bottom), (left, right))``",
            wshape="(H_in, W_in, in_channels, out_channels, kh, kw)",
            bshape="(H_out, W_out, out_channels)",
        )
        + """
    Example:
        >>> import torch
        >>> lct = LocallyConnectedTranspose2d(8, 3, 4, input_size=7, stride=2, padding=1)
        >>> lct.output_size, tuple(lct.weight.shape)
        ((14, 14), (7, 7, 8, 3, 4, 4))
        >>> lc = LocallyConnected2d(3, 8, 4, input_size=14, stride=2, padding=1, bias=False)
        >>> lct.weight = torch.nn.Parameter(lc.weight.detach().clone())
        >>> x, y = torch.randn(1, 3, 14, 14), torch.randn(1, 8, 7, 7)
        >>> lct.bias = None
        >>> torch.allclose((y * lc(x)).sum(), (lct(y) * x).sum(), atol=1e-4)
        True
    """
    )
    _n = 2
    _conv_name = "ConvTranspose2d"


class LocallyConnectedTranspose1d(_LocallyConnectedTransposeNd):
    __doc__ = (
        """A transposed 1-d convolution with unshared weights.
"""
        + _TRANSPOSE_DOC.format(
            lc=LocallyConnected1d.__name__,
            conv="ConvTranspose1d",
            per_side="``(before, after)``",
            wshape="(L_in, in_channels, out_channels, k)",
            bshape="(L_out, out_channels)",
        )
        + """
    Example:
        >>> import torch
        >>> lct = LocallyConnectedTranspose1d(4, 2, 3, input_size=10, stride=2)
        >>> lct(torch.randn(5, 4, 10)).shape
        torch.Size([5, 2, 21])
    """
    )
    _n = 1
    _conv_name = "ConvTranspose1d"
