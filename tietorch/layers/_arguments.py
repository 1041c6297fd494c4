"""The constructor arguments of the locally connected layers, parsed and checked once (private).

``parse_arguments`` turns what a ``LocallyConnected*d`` or ``LocallyConnectedTranspose*d`` is
given (channels, ``kernel_size``, ``input_size``, ``stride``, ``padding``, ``dilation``,
``groups``, ``output_padding``, ``implementation``) into a frozen ``LayerArguments``: the tuples
per spatial dim, the padding per side, the output size and the kernels' ``Geometry``. Every
``ValueError``/``TypeError`` a layer raises about its arguments comes from here, in the order
the arguments are checked. ``bias_tie`` is the part of the ``tie`` argument that the bias gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._tie import AllOf, Tie
from ..errors import ArgumentError, TieTypeError
from ..ties.tile_share import TileShare
from . import _lc_function as _lc

__all__: list[str] = []

IMPLEMENTATIONS = ("auto", "batched", "chunked", "unfold")

Padding = str | tuple[int, ...] | tuple[tuple[int, int], ...]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        out = (value,) * n
    else:
        try:
            out = tuple(value)  # type: ignore[arg-type]
        except TypeError:
            raise TieTypeError(
                f"{name} must be an int or a tuple of {n} ints, got {value!r}"
            ) from None
        if len(out) == 1 and n > 1:
            out = out * n
    if len(out) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise ArgumentError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    return out


def _positive(value: tuple[int, ...], name: str) -> tuple[int, ...]:
    if any(v <= 0 for v in value):
        raise ArgumentError(f"{name} must be positive, got {value}")
    return value


def _positive_tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    return _positive(_tuple(value, n, name), name)


def _pads(padding: object, n: int, name: str) -> list[tuple[int, int]]:
    """Per spatial dim ``(before, after)`` from an int, a tuple of ints (symmetric per dim),
    ``((before, after), ...)`` one pair per dim, or in 1-d also ``(before, after)``."""
    expected = f"an int, a tuple of {n} ints or of {n} (before, after) pairs" + (
        ", or (before, after)" if n == 1 else ""
    )
    items: list[object]
    if _is_int(padding):
        items = [padding] * n
    elif isinstance(padding, Sequence) and not isinstance(padding, str):
        items = list(padding)
        if n == 1 and len(items) == 2 and all(_is_int(v) for v in items):
            items = [tuple(items)]  # 1-d (before, after)
        elif len(items) == 1 and n > 1:
            items = items * n
    else:
        raise TieTypeError(f"{name}: padding must be {expected}, got {padding!r}")
    pads: list[tuple[int, int]] = []
    for v in items:
        if _is_int(v):
            pair = (v, v)
        elif isinstance(v, Sequence) and len(v) == 2 and all(_is_int(u) for u in v):
            pair = (v[0], v[1])
        else:
            raise ArgumentError(f"{name}: padding must be {expected}, got {padding!r}")
        pads.append(pair)  # type: ignore[arg-type]
    if len(pads) != n:
        raise ArgumentError(f"{name}: padding must be {expected}, got {padding!r}")
    if any(p < 0 for pair in pads for p in pair):
        raise ArgumentError(f"{name}: padding must be >= 0, got {padding!r}")
    return pads


def _string_pads(
    padding: str,
    stride: tuple[int, ...],
    kernel: tuple[int, ...],
    dilation: tuple[int, ...],
    layer: str,
    conv: str,
) -> list[tuple[int, int]]:
    """``"valid"`` or ``"same"`` (stride 1 only, like the conv) as ``(before, after)`` per dim."""
    if padding == "valid":
        return [(0, 0)] * len(kernel)
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ArgumentError(
                f"{layer}: padding='same' is not supported for strided layers "
                f"(stride={stride}), like nn.{conv}"
            )
        pads = []
        for k, d in zip(kernel, dilation):
            total = d * (k - 1)  # PyTorch's convention: the extra pixel goes last
            pads.append((total // 2, total - total // 2))
        return pads
    raise ArgumentError(
        f"{layer}: padding must be 'valid', 'same', an int or a tuple, got {padding!r}"
    )


@dataclass(frozen=True)
class LayerArguments:
    """A layer's arguments as checked tuples, with what they fix (output size, geometry)."""

    in_channels: int
    out_channels: int
    groups: int
    implementation: str
    kernel_size: tuple[int, ...]
    input_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: Padding  # as the layer shows it: the string, per dim if symmetric, else per side
    pads: tuple[tuple[int, int], ...]  # per spatial dim: (before, after)
    output_padding: tuple[int, ...] | None  # None for a forward layer
    output_size: tuple[int, ...]
    geometry: _lc.Geometry  # of the forward layer (for a transposed one: its adjoint's)


def parse_arguments(
    layer: str,
    n: int,
    conv: str,
    *,
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    input_size: int | Sequence[int],
    stride: int | Sequence[int],
    padding: str | int | Sequence[int] | Sequence[Sequence[int]],
    dilation: int | Sequence[int],
    implementation: str,
    groups: int = 1,
    output_padding: int | Sequence[int] | None = None,
) -> LayerArguments:
    """Check the arguments of the ``n``-d layer named ``layer`` (``conv``: the ``nn`` class it
    mirrors). ``output_padding`` is given for a transposed layer (which refuses string
    padding) and None for a forward one."""
    transposed = output_padding is not None
    for label, v in (
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("groups", groups),
    ):
        if not _is_int(v) or v <= 0:
            raise ArgumentError(f"{layer}: {label} must be a positive int, got {v!r}")
    if in_channels % groups or out_channels % groups:
        raise ArgumentError(
            f"{layer}: in_channels ({in_channels}) and out_channels ({out_channels}) must "
            f"be divisible by groups ({groups}), like nn.{conv}"
        )
    if implementation not in IMPLEMENTATIONS:
        raise ArgumentError(
            f"{layer}: implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}"
        )
    if transposed and isinstance(padding, str):
        raise ArgumentError(f"{layer}: padding must be ints, like nn.ConvTranspose, not a string")
    kernel = _positive_tuple(kernel_size, n, "kernel_size")
    size = _positive_tuple(input_size, n, "input_size")
    strides = _positive_tuple(stride, n, "stride")
    dilations = _positive_tuple(dilation, n, "dilation")
    out_pad: tuple[int, ...] | None = None
    if output_padding is not None:
        out_pad = _tuple(output_padding, n, "output_padding")
        if any(not 0 <= p < s for p, s in zip(out_pad, strides)):
            raise ArgumentError(
                f"{layer}: output_padding must be >= 0 and smaller than the stride "
                f"{strides}, got {out_pad}"
            )

    shown: Padding
    if isinstance(padding, str):
        pads = _string_pads(padding, strides, kernel, dilations, layer, conv)
        shown = padding
    else:
        pads = _pads(padding, n, layer)
        sym = all(lo == hi for lo, hi in pads)
        shown = tuple(lo for lo, _ in pads) if sym else tuple(pads)

    if out_pad is None:
        out = tuple(
            _lc.output_size(i, k, s, lo, hi, d)
            for i, k, s, (lo, hi), d in zip(size, kernel, strides, pads, dilations)
        )
        if any(o <= 0 for o in out):
            raise ArgumentError(
                f"{layer}: no output location: input_size={size} with "
                f"kernel_size={kernel}, padding={shown}, "
                f"dilation={dilations}, stride={strides} gives output size {out}"
            )
    else:
        out = tuple(
            (i - 1) * s - lo - hi + d * (k - 1) + op + 1
            for i, s, (lo, hi), d, k, op in zip(size, strides, pads, dilations, kernel, out_pad)
        )
        if any(o <= 0 for o in out):
            raise ArgumentError(
                f"{layer}: no output location: input_size={size} with "
                f"kernel_size={kernel}, padding={shown}, stride={strides}, "
                f"dilation={dilations}, output_padding={out_pad} gives output "
                f"size {out}"
            )

    # the forward layer's geometry: a transposed layer's output is its adjoint's input
    geometry_input = out if transposed else size
    if n >= 2:
        geometry = _lc.make_geometry(
            geometry_input, kernel, strides, tuple(p for pair in pads for p in pair), dilations
        )
    else:  # 1-d: a 2-d layer of width 1, so its positions are rows (blocks can chunk them)
        geometry = _lc.make_geometry(
            (geometry_input[0], 1),
            (kernel[0], 1),
            (strides[0], 1),
            (*pads[0], 0, 0),
            (dilations[0], 1),
        )
    return LayerArguments(
        in_channels=in_channels,
        out_channels=out_channels,
        groups=groups,
        implementation=implementation,
        kernel_size=kernel,
        input_size=size,
        stride=strides,
        dilation=dilations,
        padding=shown,
        pads=tuple(pads),
        output_padding=out_pad,
        output_size=out,
        geometry=geometry,
    )


def bias_tie(tie: Tie, weight_ndim: int) -> Tie | None:
    """The part of ``tie`` that also makes sense for the bias: its ``TileShare`` parts, with
    their location dims counted from the front (the bias has fewer dims than the weight)."""
    parts = tie.ties if isinstance(tie, AllOf) else (tie,)
    shares = [
        TileShare(t.tile, dims=tuple(d % weight_ndim for d in t.dims))
        for t in parts
        if isinstance(t, TileShare)
    ]
    if not shares:
        return None
    out: Tie = shares[0]
    for t in shares[1:]:
        out = out & t
    return out
