"""Locally connected layers: convolutions whose kernel differs at every output location.

``LocallyConnected2d`` takes the arguments of ``nn.Conv2d`` plus ``input_size`` (the locations
must be known to create one kernel per location), ``LocallyConnected1d`` those of ``nn.Conv1d``.
``unshare(conv, input_size)`` turns an existing convolution into the equivalent locally connected
layer, the starting point for letting each location drift away from the shared kernel.

Weight layout (fixed, location dims first, kernel dims last)::

    LocallyConnected2d.weight: (H_out, W_out, out_channels, in_channels, kh, kw)
    LocallyConnected2d.bias:   (H_out, W_out, out_channels)
    LocallyConnected1d.weight: (L_out, out_channels, in_channels, k)
    LocallyConnected1d.bias:   (L_out, out_channels)

so that ``weight[i, j]`` is an ordinary ``Conv2d`` weight, ties over locations act on the leading
dims (``TileShare``) and kernel ties act on the last two (``KernelSymmetry``); both compose with
``&``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._register import register_tie
from .._tie import AllOf, Tie
from .._torch_compat import original, parametrization_list
from ..ties.tile_share import TileShare
from . import _lc_function as _lc

__all__ = [
    "LocallyConnected1d",
    "LocallyConnected2d",
    "LocallyConnectedTranspose1d",
    "LocallyConnectedTranspose2d",
    "free_workspace",
    "unshare",
]

IMPLEMENTATIONS = ("auto", "batched", "chunked", "unfold")
free_workspace = _lc.free_workspace


def _tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        out = (value,) * n
    else:
        try:
            out = tuple(value)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"{name} must be an int or a tuple of {n} ints, got {value!r}"
            ) from None
        if len(out) == 1 and n > 1:
            out = out * n
    if len(out) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    return out


def _positive(value: tuple[int, ...], name: str) -> tuple[int, ...]:
    if any(v <= 0 for v in value):
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
        raise TypeError(f"{name}: padding must be {expected}, got {padding!r}")
    pads: list[tuple[int, int]] = []
    for v in items:
        if _is_int(v):
            pair = (v, v)
        elif isinstance(v, Sequence) and len(v) == 2 and all(_is_int(u) for u in v):
            pair = (v[0], v[1])
        else:
            raise ValueError(f"{name}: padding must be {expected}, got {padding!r}")
        pads.append(pair)  # type: ignore[arg-type]
    if len(pads) != n:
        raise ValueError(f"{name}: padding must be {expected}, got {padding!r}")
    if any(p < 0 for pair in pads for p in pair):
        raise ValueError(f"{name}: padding must be >= 0, got {padding!r}")
    return pads


def _bias_tie(tie: Tie, weight_ndim: int) -> Tie | None:
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


class _LocallyConnectedNd(nn.Module):
    """Shared machinery; the public classes fix the number of spatial dims."""

    _n: int = 2
    _conv_name: str = "Conv2d"
    weight: Tensor  # a Parameter, or the tied weight computed from its free vector
    bias: Tensor | None
    tie: Tie | None  # the weight's tie, as given at construction

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        input_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] | Sequence[Sequence[int]] = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        tie: Tie | None = None,
        implementation: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        groups: int = 1,
    ) -> None:
        super().__init__()
        n = self._n
        name = type(self).__name__
        for label, v in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("groups", groups),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}: {label} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) must "
                f"be divisible by groups ({groups}), like nn.{self._conv_name}"
            )
        self.groups = groups
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"{name}: implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _positive(_tuple(kernel_size, n, "kernel_size"), "kernel_size")
        self.input_size = _positive(_tuple(input_size, n, "input_size"), "input_size")
        self.stride = _positive(_tuple(stride, n, "stride"), "stride")
        self.dilation = _positive(_tuple(dilation, n, "dilation"), "dilation")
        self.implementation = implementation

        # padding: int / tuple (symmetric per dim) / "valid" / "same" (stride 1 only, like conv)
        if isinstance(padding, str):
            if padding == "valid":
                pads = [(0, 0)] * n
            elif padding == "same":
                if any(s != 1 for s in self.stride):
                    raise ValueError(
                        f"{name}: padding='same' is not supported for strided layers "
                        f"(stride={self.stride}), like nn.{self._conv_name}"
                    )
                pads = []
                for k, d in zip(self.kernel_size, self.dilation):
                    total = d * (k - 1)  # PyTorch's convention: the extra pixel goes last
                    pads.append((total // 2, total - total // 2))
            else:
                raise ValueError(
                    f"{name}: padding must be 'valid', 'same', an int or a tuple, got {padding!r}"
                )
            self.padding: str | tuple[int, ...] | tuple[tuple[int, int], ...] = padding
        else:
            pads = _pads(padding, n, name)
            sym = all(lo == hi for lo, hi in pads)
            self.padding = tuple(lo for lo, _ in pads) if sym else tuple(pads)
        self._pads = tuple(pads)  # per spatial dim: (before, after)

        out = tuple(
            _lc.output_size(i, k, s, lo, hi, d)
            for i, k, s, (lo, hi), d in zip(
                self.input_size, self.kernel_size, self.stride, pads, self.dilation
            )
        )
        if any(o <= 0 for o in out):
            raise ValueError(
                f"{name}: no output location: input_size={self.input_size} with "
                f"kernel_size={self.kernel_size}, padding={self.padding}, "
                f"dilation={self.dilation}, stride={self.stride} gives output size {out}"
            )
        self.output_size = out

        if n == 2:
            padding4 = (*pads[0], *pads[1])
            self._geometry = _lc.make_geometry(
                self.input_size, self.kernel_size, self.stride, padding4, self.dilation
            )
        else:  # 1-d: a 2-d layer of width 1, so its positions are rows (blocks can chunk them)
            self._geometry = _lc.make_geometry(
                (self.input_size[0], 1),
                (self.kernel_size[0], 1),
                (self.stride[0], 1),
                (*pads[0], 0, 0),
                (self.dilation[0], 1),
            )

        self.weight = nn.Parameter(
            torch.empty(
                (*out, out_channels, in_channels // groups, *self.kernel_size),
                device=device,
                dtype=dtype,
            )
        )
        if bias:
            self.bias = nn.Parameter(torch.empty((*out, out_channels), device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        self.tie = None
        if tie is not None:
            self._apply_tie(tie)

    # ------------------------------------------------------------------ parameters

    def _apply_tie(self, tie: Tie) -> None:
        parts = tie.ties if isinstance(tie, AllOf) else (tie,)
        for part in parts:
            if isinstance(part, TileShare):
                bad = [d for d in part.dims if d % len(self.weight.shape) >= self._n]
                if bad:
                    raise ValueError(
                        f"{type(self).__name__}: {part!r} must act on the location dims "
                        f"{tuple(range(self._n))} of the weight "
                        f"{tuple(self.weight.shape)}, not on dims {tuple(bad)}"
                    )
        register_tie(self, "weight", tie)
        if self.bias is not None:
            bias_tie = _bias_tie(tie, self.weight.dim())
            if bias_tie is not None:
                register_tie(self, "bias", bias_tie)
        self.tie = tie
        self.reset_parameters()

    def _storage(self, name: str) -> Tensor | None:
        """The tensor that really holds ``name``: the free vector if tied, else the parameter."""
        if parametrize.is_parametrized(self, name):
            return original(parametrization_list(self, name))
        tensor = getattr(self, name)
        assert tensor is None or isinstance(tensor, Tensor)
        return tensor

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s initialization, per location: every weight and bias entry is
        ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = in_channels * prod(kernel_size)``
        (what ``kaiming_uniform_(a=sqrt(5))`` gives). When tied, the free vector is drawn from
        the same law, so every entry keeps it."""
        fan_in = self._fan_channels() * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            for name in ("weight", "bias"):
                t = self._storage(name)
                if t is not None:
                    t.uniform_(-bound, bound)

    def _fan_channels(self) -> int:
        return self.in_channels // self.groups

    @staticmethod
    def _unfold_kernel(x: Tensor, weight: Tensor, bias: Tensor | None, g: _lc.Geometry) -> Tensor:
        return _lc.locally_connected_unfold(x, weight, bias, g)

    @staticmethod
    def _gemm_kernel(
        x: Tensor, weight: Tensor, bias: Tensor | None, g: _lc.Geometry, rows: int | None
    ) -> Tensor:
        return _lc.locally_connected_gemm(x, weight, bias, g, rows)

    # ------------------------------------------------------------------ forward

    def implementation_for(self, batch_size: int, dtype: torch.dtype | None = None) -> str:
        """The implementation ``forward`` uses for this batch size (resolves ``"auto"``)."""
        if dtype is None:
            storage = self._storage("weight")
            assert storage is not None  # a layer always has a weight
            dtype = storage.dtype
        name, _ = self._plan(batch_size, dtype)
        return name

    def _plan(self, batch: int, dtype: torch.dtype) -> tuple[str, int | None]:
        if self.implementation == "unfold":
            return "unfold", None
        if (
            self.implementation == "auto"
            and not _lc.is_compiling()
            and torch._C._are_functorch_transforms_active()
        ):
            return "unfold", None  # vmap/grad/jvp: the custom Function has no rules for them
        g = self._geometry
        # the GEMM's reduced and output dims: a transposed layer runs the adjoint's kernels
        c, o = self.in_channels, self.out_channels
        if isinstance(self, _LocallyConnectedTransposeNd):
            c, o = o, c
        rows = _lc.rows_for_budget(g, batch, c * math.prod(self.kernel_size), o, dtype)
        if self.implementation == "batched" or (
            self.implementation == "auto" and rows >= g.out_size[0]
        ):
            return "batched", None
        return "chunked", rows

    def _check_input(self, x: Tensor) -> None:
        n, name = self._n, type(self).__name__
        if x.dim() not in (n + 1, n + 2):
            raise ValueError(
                f"{name}: expected a {n + 1}-d (unbatched) or {n + 2}-d (batched) input, got "
                f"shape {tuple(x.shape)}"
            )
        c = x.shape[-n - 1]
        if c != self.in_channels:
            raise ValueError(
                f"{name}: expected {self.in_channels} input channels, got {c} "
                f"(input shape {tuple(x.shape)})"
            )
        size = tuple(x.shape[-n:])
        if size != self.input_size:
            raise ValueError(
                f"{name}: expected spatial size {self.input_size} (input_size), got {size} "
                f"(input shape {tuple(x.shape)}); the locations are fixed at construction"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        unbatched = x.dim() == self._n + 1
        if unbatched:
            x = x.unsqueeze(0)
        weight, bias = self.weight, self.bias
        x, weight, bias = self._cast(x, weight, bias)
        g = self._geometry
        if self._n == 1:  # view as 2-d with width 1
            x = x.unsqueeze(-1)
            weight = weight.unsqueeze(1).unsqueeze(-1)
            bias = None if bias is None else bias.unsqueeze(1)
        name, rows = self._plan(x.shape[0], weight.dtype)
        if name == "unfold":
            y = self._unfold_kernel(x, weight, bias, g)
        else:
            y = self._gemm_kernel(x, weight, bias, g, rows)
        if self._n == 1:
            y = y.squeeze(-1)
        return y.squeeze(0) if unbatched else y

    def _cast(
        self, x: Tensor, weight: Tensor, bias: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Dtypes as ``nn.Conv2d``: under ``torch.autocast`` (any device type) the input, the
        weight and the bias run in the autocast dtype (float64 tensors are left alone, as
        autocast does); otherwise the input must have the weight's dtype."""
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            low = torch.get_autocast_dtype(device_type)

            def cast(t: Tensor) -> Tensor:
                return t.to(low) if t.is_floating_point() and t.dtype != torch.float64 else t

            x, weight = cast(x), cast(weight)
            bias = None if bias is None else cast(bias)
        if x.dtype != weight.dtype:
            raise TypeError(
                f"{type(self).__name__}: input dtype {x.dtype} does not match the weight's "
                f"{weight.dtype} (input shape {tuple(x.shape)}); convert one of them, or run "
                "under torch.autocast, as for nn.Conv2d"
            )
        return x, weight, bias

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"input_size={self.input_size}, stride={self.stride}"
        )
        if self.padding != (0,) * self._n:
            s += (
                f", padding={self.padding!r}"
                if isinstance(self.padding, str)
                else f", padding={self.padding}"
            )
        if self.dilation != (1,) * self._n:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.implementation != "auto":
            s += f", implementation={self.implementation!r}"
        return s


_CLASS_DOC = """
    Arguments and conventions as ``nn.{conv}``, on {layout}.
    ``stride``, ``padding`` and ``dilation``: an int or a tuple; ``padding`` also ``"valid"``
    or ``"same"`` (the latter only with stride 1, like the conv), or per side
    (``((top, bottom), (left, right))``, in 1-d ``(before, after)``); zero padding;
    ``groups`` as the conv's (the weight's dim 3 is ``in_channels // groups``). In addition:

    Args:
        input_size: the spatial size of the input ({size}); it fixes the output locations, and
            an input of any other size is refused (``ValueError``).
        tie: a ``tietorch.Tie`` for the weight (registered with ``tietorch.register_tie``),
            for example {tie_examples},
            or their combination with ``&``. The ``TileShare`` part of the tie is also
            registered on the bias (locations sharing a kernel share a bias). Other ties
            leave the bias free; tie it yourself with ``tietorch.register_tie(layer, "bias",
            ...)``. With a tie, the free parameters are initialized from the same law as an
            untied layer's entries.
        implementation: ``"auto"`` (default), ``"batched"``, ``"chunked"`` or ``"unfold"``.
            Keras offers three modes and asks you to benchmark; here ``"auto"`` chooses:

            * ``"chunked"``: a custom autograd Function, one GEMM per location run as a
              batched GEMM over blocks of output rows; a block's patches and GEMM output take
              about {budget} MiB and the buffers are reused. The fastest and leanest in every
              case of ``benchmarks/bench_locally_connected.py`` (batch 32 to 256, 3 to 16
              input channels, strided or not).
            * ``"batched"``: the same kernel with all locations in one block. Identical to
              ``"chunked"`` when everything fits in one block; otherwise slower (the buffers
              outgrow the cache) and its scratch grows as
              ``locations * batch * (in_channels * kernel + out_channels)``.
            * ``"unfold"``: plain autograd (``F.unfold`` + ``einsum``): 3-8x slower, but
              differentiable twice and usable inside ``torch.func`` transforms
              (``vmap``/``grad``/``jvp``).

            ``"auto"`` runs ``"unfold"`` inside ``torch.func`` transforms, where the custom
            Function has no rules, and the GEMM kernel otherwise, in one block (``"batched"``)
            when it fits the {budget} MiB budget and in blocks of that size (``"chunked"``)
            when not; ``implementation_for(batch_size)`` tells which. The GEMM kernel is not
            differentiable twice (``create_graph=True`` through it raises): choose
            ``"unfold"`` for gradient penalties and other higher-order gradients.

    A channels-last input (``x.contiguous(memory_format=torch.channels_last)``) gives a
    channels-last output and skips two layout copies; other inputs give contiguous outputs.
    On CPU the GEMM implementations keep their temporaries (an output-sized staging buffer
    and the chunk buffers) per thread between calls, to avoid re-faulting fresh memory on
    every step; ``free_workspace()`` (in this module) releases them.

    Attributes:
        weight: ``{wshape}``.
        bias: ``{bshape}`` or None.
        output_size: the number of output locations per spatial dim.
"""


class LocallyConnected2d(_LocallyConnectedNd):
    __doc__ = (
        """A 2-d convolution with unshared weights: each output location has its own kernel
    and its own bias per output channel.

    ``y[b, o, i, j] = bias[i, j, o] + sum_{c, a, d} weight[i, j, o, c, a, d] *
    x_pad[b, c, i*sh + a*dh, j*sw + d*dw]``.
"""
        + _CLASS_DOC.format(
            conv="Conv2d",
            layout="NCHW inputs (or an unbatched (C, H, W) one)",
            size="(H, W)",
            budget=_lc.SCRATCH_BUDGET >> 20,
            tie_examples="``TileShare(t)`` (a tiled convolution),\n            "
            '``KernelSymmetry("D4")`` (kernels invariant under rotations and flips)',
            wshape="(H_out, W_out, out_channels, in_channels, kh, kw)",
            bshape="(H_out, W_out, out_channels)",
        )
        + """
    Example:
        >>> import torch
        >>> layer = LocallyConnected2d(3, 2, 3, input_size=24)  # the forum thread's example
        >>> layer.weight.shape, layer.weight.numel()
        (torch.Size([22, 22, 2, 3, 3, 3]), 26136)
        >>> layer(torch.randn(5, 3, 24, 24)).shape
        torch.Size([5, 2, 22, 22])
        >>> from tietorch.ties.tile_share import TileShare
        >>> tiled = LocallyConnected2d(3, 8, 3, input_size=32, tie=TileShare(2))
        >>> [p.numel() for p in tiled.parameters()]  # 8*2*2*3*3*3 weights, 8*2*2 biases
        [864, 32]
    """
    )
    _n = 2
    _conv_name = "Conv2d"


class LocallyConnected1d(_LocallyConnectedNd):
    __doc__ = (
        """A 1-d convolution with unshared weights: each output position has its own kernel
    and its own bias per output channel.

    ``y[b, o, i] = bias[i, o] + sum_{c, a} weight[i, o, c, a] * x_pad[b, c, i*s + a*d]``.
"""
        + _CLASS_DOC.format(
            conv="Conv1d",
            layout="NCL inputs (or an unbatched (C, L) one)",
            size="L",
            budget=_lc.SCRATCH_BUDGET >> 20,
            tie_examples="``TileShare(t, dims=0)`` (a tiled convolution;\n            "
            "the only location dim is dim 0)",
            wshape="(L_out, out_channels, in_channels, k)",
            bshape="(L_out, out_channels)",
        )
        + """
    Example:
        >>> import torch
        >>> layer = LocallyConnected1d(4, 8, 5, input_size=100, stride=2)
        >>> layer.weight.shape
        torch.Size([48, 8, 4, 5])
        >>> layer(torch.randn(2, 4, 100)).shape
        torch.Size([2, 8, 48])
    """
    )
    _n = 1
    _conv_name = "Conv1d"


class _LocallyConnectedTransposeNd(_LocallyConnectedNd):
    """The adjoint of a locally connected layer; shares the base's parameter machinery."""

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
    ) -> None:
        nn.Module.__init__(self)
        n = self._n
        name = type(self).__name__
        for label, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not _is_int(v) or v <= 0:
                raise ValueError(f"{name}: {label} must be a positive int, got {v!r}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"{name}: implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}"
            )
        if isinstance(padding, str):
            raise ValueError(f"{name}: padding must be ints, like nn.ConvTranspose, not a string")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _positive(_tuple(kernel_size, n, "kernel_size"), "kernel_size")
        self.input_size = _positive(_tuple(input_size, n, "input_size"), "input_size")
        self.stride = _positive(_tuple(stride, n, "stride"), "stride")
        self.dilation = _positive(_tuple(dilation, n, "dilation"), "dilation")
        self.output_padding = _tuple(output_padding, n, "output_padding")
        self.groups = 1
        if any(not 0 <= p < s for p, s in zip(self.output_padding, self.stride)):
            raise ValueError(
                f"{name}: output_padding must be >= 0 and smaller than the stride "
                f"{self.stride}, got {self.output_padding}"
            )
        self.implementation = implementation
        pads = _pads(padding, n, name)
        sym = all(lo == hi for lo, hi in pads)
        self.padding = tuple(lo for lo, _ in pads) if sym else tuple(pads)
        self._pads = tuple(pads)
        out = tuple(
            (i - 1) * s - lo - hi + d * (k - 1) + op + 1
            for i, s, (lo, hi), d, k, op in zip(
                self.input_size, self.stride, pads, self.dilation, self.kernel_size,
                self.output_padding,
            )
        )  # fmt: skip
        if any(o <= 0 for o in out):
            raise ValueError(
                f"{name}: no output location: input_size={self.input_size} with "
                f"kernel_size={self.kernel_size}, padding={self.padding}, stride={self.stride}, "
                f"dilation={self.dilation}, output_padding={self.output_padding} gives output "
                f"size {out}"
            )
        self.output_size = out
        # the geometry of the layer this one is the adjoint of: its input is our output
        if n == 2:
            self._geometry = _lc.make_geometry(
                out, self.kernel_size, self.stride, (*pads[0], *pads[1]), self.dilation
            )
        else:
            self._geometry = _lc.make_geometry(
                (out[0], 1),
                (self.kernel_size[0], 1),
                (self.stride[0], 1),
                (*pads[0], 0, 0),
                (self.dilation[0], 1),
            )
        assert self._geometry.out_size[: self._n] == self.input_size[: self._n]
        self.weight = nn.Parameter(
            torch.empty(
                (*self.input_size, in_channels, out_channels, *self.kernel_size),
                device=device,
                dtype=dtype,
            )
        )
        if bias:
            self.bias = nn.Parameter(torch.empty((*out, out_channels), device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        self.tie = None
        if tie is not None:
            self._apply_tie(tie)

    def _fan_channels(self) -> int:
        return self.out_channels  # as nn.ConvTranspose: its weight's dim 1

    @staticmethod
    def _unfold_kernel(x: Tensor, weight: Tensor, bias: Tensor | None, g: _lc.Geometry) -> Tensor:
        return _lc.locally_connected_transpose_unfold(x, weight, bias, g)

    @staticmethod
    def _gemm_kernel(
        x: Tensor, weight: Tensor, bias: Tensor | None, g: _lc.Geometry, rows: int | None
    ) -> Tensor:
        return _lc.locally_connected_transpose_gemm(x, weight, bias, g, rows)

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
            lc="LocallyConnected2d",
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
            lc="LocallyConnected1d",
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


def unshare(
    conv: nn.Conv1d | nn.Conv2d | nn.ConvTranspose1d | nn.ConvTranspose2d,
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
        (nn.Conv2d, LocallyConnected2d),
        (nn.Conv1d, LocallyConnected1d),
    ]
    cls = next((c for t, c in classes if isinstance(conv, t)), None)
    if cls is None:
        raise TypeError(
            "unshare: expected an nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d or "
            f"nn.ConvTranspose2d, got {type(conv).__name__}"
        )
    if conv.groups != 1 and issubclass(cls, _LocallyConnectedTransposeNd):
        raise ValueError(
            f"unshare: grouped transposed convs are not supported, got groups={conv.groups}"
        )
    if conv.padding_mode != "zeros":
        raise ValueError(
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
