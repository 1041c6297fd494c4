"""The forward locally connected layers: convolutions whose kernel differs at every output location.

``LocallyConnected2d`` takes the arguments of ``nn.Conv2d`` plus ``input_size`` (the locations
must be known to create one kernel per location), ``LocallyConnected1d`` those of ``nn.Conv1d``.
``_LocallyConnectedNd`` also holds what the transposed layers
(``locally_connected_transpose.py``) share with them: the parameters, their ties and
initialization, the choice of implementation and ``forward``. The arguments are checked in
``_arguments.py``, the kernels are in ``_lc_function.py``, ``unshare`` is in ``unshare.py``.

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
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._layout import gather
from .._parametrization import TieParametrization, lone_tie
from .._register import register_tie
from .._tie import AllOf, Tie
from .._torch_compat import autocast_dtype, original, parametrization_list
from ..errors import ArgumentError, ShapeError, TieTypeError
from ..ties.tile_share import TileShare
from ..ties.zeros import ZeroWhere
from . import _lc_function as _lc
from . import _tiled
from ._arguments import LayerArguments, Padding, bias_tie, parse_arguments
from ._keras import KerasLayer, KerasPort

__all__ = ["LocallyConnected1d", "LocallyConnected2d", "LocallyConnected3d", "free_workspace"]

_Portable = TypeVar("_Portable", bound="_KerasPortableNd")

free_workspace = _lc.free_workspace


class _LocallyConnectedNd(nn.Module):
    """Shared machinery; the public classes fix the number of spatial dims."""

    _n: int = 2
    _conv_name: str = "Conv2d"
    #: Whether a weight tiled over the locations runs as strided convolutions (``_tiled.py``)
    #: under ``implementation="auto"``; the transposed layers keep their GEMM kernels.
    _tiles_as_convs: bool = True
    weight: Tensor  # a Parameter, or the tied weight computed from its free vector
    bias: Tensor | None
    tie: Tie | None  # the weight's tie, as given at construction
    padding: Padding

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
        zero_padding_weights: bool = False,
    ) -> None:
        super().__init__()
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
            groups=groups,
        )
        weight_shape = (*args.output_size, out_channels, in_channels // groups, *args.kernel_size)
        self._build(args, weight_shape, bias, tie, device, dtype, zero_padding_weights)

    def _build(
        self,
        args: LayerArguments,
        weight_shape: tuple[int, ...],
        bias: bool,
        tie: Tie | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        zero_padding_weights: bool = False,
    ) -> None:
        """Keep the checked arguments, create the weight and bias, initialize and tie them
        (with ``zero_padding_weights``, the weights that face only padding forced to zero)."""
        self.in_channels = args.in_channels
        self.out_channels = args.out_channels
        self.groups = args.groups
        self.kernel_size = args.kernel_size
        self.input_size = args.input_size
        self.stride = args.stride
        self.dilation = args.dilation
        self.implementation = args.implementation
        self.padding = args.padding
        self._pads = args.pads  # per spatial dim: (before, after)
        self.output_size = args.output_size
        self._geometry = args.geometry
        self.weight = nn.Parameter(torch.empty(weight_shape, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(
                torch.empty((*args.output_size, args.out_channels), device=device, dtype=dtype)
            )
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        self.tie = None
        self.zero_padding_weights = zero_padding_weights
        if zero_padding_weights:
            tie = self._with_padding_zeros(tie)
        if tie is not None:
            self._apply_tie(tie)

    def _padding_mask(self) -> Tensor:
        """Which weight entries multiply only padding: at some location, some kernel offset
        reads outside the input (``o * stride - before + i * dilation`` not in ``[0, L)``)."""
        out, kernel = self.output_size, self.kernel_size
        n = len(kernel)
        mask = torch.zeros((*out, 1, 1, *kernel), dtype=torch.bool)
        for d, (size, k, s, dil, (before, _)) in enumerate(
            zip(self.input_size, kernel, self.stride, self.dilation, self._pads)
        ):
            p = _lc.window_reads(out[d], k, s, before, dil)
            outside = (p < 0) | (p >= size)  # (out_d, k_d)
            shape = [1] * (2 * n + 2)
            shape[d], shape[n + 2 + d] = out[d], k
            mask = mask | outside.view(shape)
        return mask.expand(self.weight.shape).contiguous()

    def _with_padding_zeros(self, tie: Tie | None) -> Tie | None:
        """``tie`` with the weights that face only padding forced to zero (``ZeroWhere``),
        refused where one of its classes holds both such a weight and one that reads the
        input: forcing it would zero weights that matter (``TileShare``, a kernel symmetry at
        the border)."""
        mask = self._padding_mask()
        if not bool(mask.any()):
            return tie  # no padding: nothing faces it
        zeros = ZeroWhere(mask)
        if tie is None:
            return zeros
        layout = tie.layout(tuple(self.weight.shape))
        index, flat = layout.index.reshape(-1), mask.reshape(-1)
        # entries the tie already forces to zero do not count
        live = torch.ones_like(flat) if layout.sign is None else layout.sign.reshape(-1) != 0
        facing = torch.bincount(index[flat & live], minlength=layout.n_free) > 0
        reading = torch.bincount(index[~flat & live], minlength=layout.n_free) > 0
        mixed = facing & reading
        if bool(mixed.any()):
            entry = int(torch.nonzero(flat & live & mixed[index])[0])
            where = tuple(torch.unravel_index(torch.tensor(entry), self.weight.shape))
            raise ArgumentError(
                f"{type(self).__name__}: zero_padding_weights=True cannot be combined with "
                f"{tie!r}: it ties weights that face only padding to weights that read the "
                f"input (weight{tuple(int(i) for i in where)} of shape "
                f"{tuple(self.weight.shape)} is one), so forcing the first to zero would zero "
                "the others"
            )
        return tie & zeros

    # ------------------------------------------------------------------ parameters

    def _apply_tie(self, tie: Tie) -> None:
        parts = tie.ties if isinstance(tie, AllOf) else (tie,)
        for part in parts:
            if isinstance(part, TileShare):
                bad = [d for d in part.dims if d % len(self.weight.shape) >= self._n]
                if bad:
                    raise ArgumentError(
                        f"{type(self).__name__}: {part!r} must act on the location dims "
                        f"{tuple(range(self._n))} of the weight "
                        f"{tuple(self.weight.shape)}, not on dims {tuple(bad)}"
                    )
        register_tie(self, "weight", tie)
        if self.bias is not None:
            bias_part = bias_tie(tie, self.weight.dim())
            if bias_part is not None:
                register_tie(self, "bias", bias_part)
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

    def _gemm_channels(self) -> tuple[int, int]:
        """The channels the GEMM reduces over and produces (the adjoint's, if transposed)."""
        return self.in_channels, self.out_channels

    def _unfold_kernel(
        self, x: Tensor, weight: Tensor, bias: Tensor | None, g: _lc.Geometry
    ) -> Tensor:
        return _lc.locally_connected_unfold(x, weight, bias, g)

    def _gemm_kernel(
        self, x: Tensor, weight: Tensor, bias: Tensor | None, g: _lc.Geometry, rows: int | None
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
        if self.implementation == "auto" and self._under_functorch():
            return "unfold", None  # vmap/grad/jvp: the custom Functions have no rules for them
        if self.implementation == "auto" and self._tiles() is not None:
            return "conv", None
        g = self._geometry
        c, o = self._gemm_channels()
        rows = _lc.rows_for_budget(g, batch, c * math.prod(self.kernel_size), o, dtype)
        if self.implementation == "batched" or (
            self.implementation == "auto" and rows >= g.out_size[0]
        ):
            return "batched", None
        return "chunked", rows

    @staticmethod
    def _under_functorch() -> bool:
        return not _lc.is_compiling() and torch._C._are_functorch_transforms_active()

    def _tiles(
        self,
    ) -> tuple[_tiled.TiledPlan, TieParametrization, TieParametrization | None] | None:
        """``(plan, weight tie, bias tie)`` where the tied weight repeats over the locations
        in few enough tiles to run as convolutions, else None. Read from the solved layout
        (any tie with that structure qualifies) and cached until a tensor is re-tied."""
        if not self._tiles_as_convs:
            return None
        weight = lone_tie(self, "weight")
        if weight is None:
            return None
        bias = None if self.bias is None else lone_tie(self, "bias")
        cached = self.__dict__.get("_tiles_cache")
        if cached is not None and cached[1] is weight and cached[2] is bias:
            plan = cached[0]
        else:

            def laid_out(tie: TieParametrization) -> tuple[Tensor, Tensor | None, tuple[int, ...]]:
                return (*tie.layout.part(tie.offset, tie.shape), tie.shape)

            plan = _tiled.plan_tiles(
                laid_out(weight), None if bias is None else laid_out(bias), self._n
            )
            # held in __dict__, not as attributes: the ties are not submodules of the layer
            self.__dict__["_tiles_cache"] = (plan, weight, bias)
        return None if plan is None else (plan, weight, bias)

    def _check_input(self, x: Tensor) -> None:
        n, name = self._n, type(self).__name__
        if x.dim() not in (n + 1, n + 2):
            raise ShapeError(
                f"{name}: expected a {n + 1}-d (unbatched) or {n + 2}-d (batched) input, got "
                f"shape {tuple(x.shape)}"
            )
        c = x.shape[-n - 1]
        if c != self.in_channels:
            raise ShapeError(
                f"{name}: expected {self.in_channels} input channels, got {c} "
                f"(input shape {tuple(x.shape)})"
            )
        size = tuple(x.shape[-n:])
        if size != self.input_size:
            raise ShapeError(
                f"{name}: expected spatial size {self.input_size} (input_size), got {size} "
                f"(input shape {tuple(x.shape)}); the locations are fixed at construction"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        unbatched = x.dim() == self._n + 1
        if unbatched:
            x = x.unsqueeze(0)
        tiled = self.implementation == "auto" and not self._under_functorch()
        tiles = self._tiles() if tiled else None
        y = self._gathered_forward(x) if tiles is None else self._tiled_forward(x, *tiles)
        return y.squeeze(0) if unbatched else y

    def _gathered_forward(self, x: Tensor) -> Tensor:
        """The layer on its full (gathered) weight, by the GEMM or unfold kernels."""
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
        return y.squeeze(-1) if self._n == 1 else y

    def _tiled_forward(
        self,
        x: Tensor,
        plan: _tiled.TiledPlan,
        weight_tie: TieParametrization,
        bias_tie: TieParametrization | None,
    ) -> Tensor:
        """The layer as ``prod(periods)`` strided convolutions on its distinct kernels,
        gathered straight from the free vector (the full weight is never built)."""
        theta = weight_tie.free_vector(original(parametrization_list(self, "weight")))
        k_index, k_sign, b_index, b_sign = plan.placed(theta.device, theta.dtype)
        assert k_index is not None
        n = self._n
        kernels = gather(theta, k_index.reshape(-1), k_sign, (*plan.periods, *weight_tie.shape[n:]))
        bias: Tensor | None = None
        if b_index is not None:
            assert bias_tie is not None
            free = bias_tie.free_vector(original(parametrization_list(self, "bias")))
            bias = gather(free, b_index.reshape(-1), b_sign, (*plan.periods, self.out_channels))
        x, kernels, bias = self._cast(x, kernels, bias)
        periods = plan.periods
        if n == 1:  # view as 2-d with width 1, as the GEMM kernels do
            x, kernels, periods = x.unsqueeze(-1), kernels.unsqueeze(1).unsqueeze(-1), (*periods, 1)
            bias = None if bias is None else bias.unsqueeze(1)
        y = _tiled.tiled_conv(
            x, kernels, bias, self._geometry, periods, self.groups, _lc._channels_last(x)
        )
        if n == 1:
            y = y.squeeze(-1)
        if b_index is None and self.bias is not None:  # a bias that does not repeat as tiles
            _, _, full = self._cast(x, kernels, self.bias)
            assert full is not None
            y = y + full.permute(n, *range(n))
        return y

    def _cast(
        self, x: Tensor, weight: Tensor, bias: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Dtypes as ``nn.Conv2d``: under ``torch.autocast`` (any device type) the input, the
        weight and the bias run in the autocast dtype (float64 tensors are left alone, as
        autocast does); otherwise the input must have the weight's dtype."""
        low = autocast_dtype(x.device.type)
        if low is not None:

            def cast(t: Tensor) -> Tensor:
                return t.to(low) if t.is_floating_point() and t.dtype != torch.float64 else t

            x, weight = cast(x), cast(weight)
            bias = None if bias is None else cast(bias)
        if x.dtype != weight.dtype:
            raise TieTypeError(
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
            Function has no rules; a weight that repeats over the locations in at most 16
            tiles (``TileShare(t)``, alone or with a kernel tie) as one strided convolution
            per tile (``"conv"``: the kernels read from the free vector, the full weight never
            built); and the GEMM kernel otherwise, in one block (``"batched"``)
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


class _KerasPortableNd(_LocallyConnectedNd):
    """The forward layers Keras also had (1-d and 2-d): they can be ported from it."""

    @classmethod
    def from_keras(
        cls: type[_Portable],
        layer: KerasLayer,
        *,
        input_size: int | Sequence[int] | None = None,
        zero_padding_weights: bool = True,
        device: torch.device | str | None = None,
    ) -> _Portable:
        """The equivalent layer of a tf_keras ``LocallyConnected1D`` / ``LocallyConnected2D``
        (any implementation, either data format, ``valid`` or Keras' own ``same``, any
        strides), weights and bias copied.

        It takes channels-first input: for a channels_last Keras 2-d layer,
        ``lc(x.permute(0, 3, 1, 2))`` equals ``keras_layer(x)`` permuted to NCHW (1-d:
        ``x.transpose(1, 2)``). Only ``layer.get_config()``, ``get_build_config()`` and
        ``get_weights()`` are read: TensorFlow is not imported. The input size comes from the
        built layer (pass ``input_size=`` for a layer that was not built by a call). A
        non-linear activation or a weight constraint is refused, never dropped. With
        ``zero_padding_weights`` (the default) the weights that face only padding are forced
        to zero and not parameters, as in Keras (implementation 3 stores none, 2 masks them, 1
        has no padding): the parameter count is implementation 3's. See docs/keras.md for the
        mapping.

        Example (the Keras part needs tf_keras, so it is not run here)::

            keras_layer = tf_keras.layers.LocallyConnected2D(8, 3, padding="same", implementation=3)
            keras_layer.build((None, 32, 32, 3))
            lc = LocallyConnected2d.from_keras(keras_layer)  # LocallyConnected2d(3, 8, 3, ...)
        """
        port = KerasPort(layer, cls._n, f"{cls.__name__}.from_keras", input_size)
        lc = cls(
            port.in_channels,
            port.filters,
            port.kernel_size,
            port.input_size,
            stride=port.stride,
            padding=port.pads,
            bias=port.use_bias,
            device=device,
            dtype=port.torch_dtype(),
            zero_padding_weights=zero_padding_weights,
        )
        with torch.no_grad():  # the zeros facing padding are zero: projected exactly
            _assign(lc, "weight", torch.from_numpy(port.weight).to(lc.weight))
            if lc.bias is not None:
                assert port.dense_bias is not None
                _assign(lc, "bias", torch.from_numpy(port.dense_bias).to(lc.bias))
        return lc


def _assign(layer: nn.Module, name: str, value: Tensor) -> None:
    """Set ``layer.<name>`` to ``value`` (under ``no_grad``): through its tie if tied (the
    projection, exact for a value that satisfies the tie), else in place."""
    if parametrize.is_parametrized(layer, name):
        setattr(layer, name, value.contiguous())
    else:
        getattr(layer, name).copy_(value)


class LocallyConnected2d(_KerasPortableNd):
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


class LocallyConnected1d(_KerasPortableNd):
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


class LocallyConnected3d(_LocallyConnectedNd):
    __doc__ = (
        """A 3-d convolution with unshared weights: each output location (a voxel of the output)
    has its own kernel and its own bias per output channel (volumes: video, medical images,
    climate grids).

    ``y[b, o, i, j, l] = bias[i, j, l, o] + sum_{c, a, d, e} weight[i, j, l, o, c, a, d, e] *
    x_pad[b, c, i*sd + a*dd, j*sh + d*dh, l*sw + e*dw]``.
"""
        + _CLASS_DOC.format(
            conv="Conv3d",
            layout="NCDHW inputs (or an unbatched (C, D, H, W) one)",
            size="(D, H, W)",
            budget=_lc.SCRATCH_BUDGET >> 20,
            tie_examples="``TileShare(t, dims=(0, 1, 2))`` (a tiled convolution over\n            "
            "the three location dims)",
            wshape="(D_out, H_out, W_out, out_channels, in_channels, kd, kh, kw)",
            bshape="(D_out, H_out, W_out, out_channels)",
        )
        + """
    Example:
        >>> import torch
        >>> layer = LocallyConnected3d(2, 4, 3, input_size=(5, 6, 6), padding=1)
        >>> layer.weight.shape
        torch.Size([5, 6, 6, 4, 2, 3, 3, 3])
        >>> layer(torch.randn(2, 2, 5, 6, 6)).shape
        torch.Size([2, 4, 5, 6, 6])
    """
    )
    _n = 3
    _conv_name = "Conv3d"
