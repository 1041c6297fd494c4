"""``unshare``: turn an existing convolution into the equal locally connected layer.

The starting point for letting each location drift away from the shared kernel: the conv's
kernel and bias are copied to every location of a ``LocallyConnected*d`` (or, for a transposed
conv, a ``LocallyConnectedTranspose*d``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._layout import TieLayout, on_cpu
from .._parametrization import TieParametrization, _tie_of
from .._register import register_tie
from .._tie import CLOSED_FORM_BYTES_PER_ENTRY, AllOf, Tie, cached_layout
from ..errors import ArgumentError, TargetError, TieTypeError
from .locally_connected import (
    LocallyConnected1d,
    LocallyConnected2d,
    LocallyConnected3d,
    _assign,
    _LocallyConnectedNd,
)
from .locally_connected_transpose import (
    LocallyConnectedTranspose1d,
    LocallyConnectedTranspose2d,
    _LocallyConnectedTransposeNd,
)

__all__ = ["unshare", "unshare_modules"]


class _AtEveryLocation(Tie):
    """A conv's tie on one kernel, applied at every location of a locally connected weight:
    ``inner``'s key or relations on the trailing dims, the ``locations`` leading dims kept
    apart (each location is tied like the conv's kernel, to itself only)."""

    def __init__(self, inner: Tie, locations: int) -> None:
        self.inner, self.locations = inner, locations

    def _declares(self) -> str:
        return self.inner._declares()

    def check_shape(self, shape: tuple[int, ...]) -> None:
        self.inner.check_shape(tuple(shape[self.locations :]))

    def key(self, *idx: Tensor) -> tuple[Tensor, ...]:
        parts = self.inner.key(*idx[self.locations :])
        return (*idx[: self.locations], *(parts if isinstance(parts, tuple) else (parts,)))

    def relations(self, *idx: Tensor) -> tuple[Tensor, ...] | list[tuple[Tensor, ...]]:
        inner = self.inner.relations(*idx[self.locations :])
        where = idx[: self.locations]
        if isinstance(inner, list):
            return [(*where, *relation) for relation in inner]
        return (*where, *inner)

    def sign(self, *idx: Tensor) -> Any:
        return self.inner.sign(*idx[self.locations :])

    def layout(self, shape: Sequence[int]) -> TieLayout:
        """In closed form: ``inner`` solved once on one kernel and repeated for every location
        (:meth:`TieLayout.repeated`, the solver's numbering), not a solve over every entry of
        the unshared weight (a 64->64 3x3 conv on 32x32 unshares to 37.7M entries)."""
        return cached_layout(self, shape, self._closed_form, CLOSED_FORM_BYTES_PER_ENTRY)

    @on_cpu  # under a meta (or cuda) default device too: layouts live on the CPU
    def _closed_form(self, shape: tuple[int, ...]) -> TieLayout:
        # the declaration solved (not inner.layout(): a hand-written closed form of the inner
        # tie may number its classes otherwise than the solve of the whole weight did)
        kernel = self.inner._solved(shape[self.locations :])
        return TieLayout.repeated(kernel, shape[: self.locations])

    def __repr__(self) -> str:
        return f"{self.inner!r} at every location"


def _at_every_location(tie: Tie, locations: int, what: str) -> Tie:
    """``tie`` (a conv's) for the unshared tensor, or a refusal that says what to pass."""
    if isinstance(tie, AllOf):
        return AllOf(*(_at_every_location(t, locations, what) for t in tie.ties))
    if tie._declares() == "layout":
        raise ArgumentError(
            f"unshare: the conv's {what} tie {tie!r} is declared by its layout only, which "
            "cannot be laid out at every location; pass tie=None (untied) or a Tie for the "
            "unshared weight"
        )
    return _AtEveryLocation(tie, locations)


def _kernel_tie(conv: nn.Module, name: str) -> Tie | None:
    """The tie on ``conv.<name>`` (None if untied); a cross-tensor tie is refused for "keep"."""
    if not parametrize.is_parametrized(conv, name):
        return None
    param = _tie_of(conv, name)
    if param is None:
        raise TargetError(
            f"unshare: {type(conv).__name__}.{name} has a parametrization that is not a tie; "
            "remove it first"
        )
    assert isinstance(param, TieParametrization)
    if param.group is not None:
        raise ArgumentError(
            f"unshare: {type(conv).__name__}.{name} is tied to other tensors "
            "(tie_tensors / tie_model), which cannot be kept at every location; pass tie=None "
            "or a Tie for the unshared weight"
        )
    return param.tie


def unshare(
    conv: nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.ConvTranspose1d | nn.ConvTranspose2d,
    input_size: int | Sequence[int] | None = None,
    *,
    example_input: Tensor | None = None,
    tie: Tie | str | None = "keep",
    implementation: str = "auto",
) -> _LocallyConnectedNd:
    """The locally connected layer equal to ``conv`` on inputs of size ``input_size`` (or of
    ``example_input``'s size).

    Stride, padding (including ``"same"``), dilation and bias are kept (and
    ``output_padding`` for a transposed conv, which gives a ``LocallyConnectedTranspose*d``);
    the conv's kernel (and bias) is copied to every location, so the two layers give the same
    output at creation; afterwards every location trains its own copy. Grouped convs
    (depthwise included, transposed ones too) keep their groups; only zero padding
    (``padding_mode="zeros"``) is supported.

    ``tie``: ``"keep"`` (the default) ties every location's kernel as the conv's kernel is tied
    (a ``KernelSymmetry("D4")`` conv gives D4 kernels at every location; its bias tie likewise),
    or refuses, saying what to pass, where that cannot be done (a cross-tensor tie, a tie
    declared by its layout only); it never drops a tie silently. ``None``: an untied layer. A
    ``Tie``: that tie on the unshared weight (e.g. ``KernelSymmetry("D4") & TileShare(2)``).

    Example:
        >>> import torch
        >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        >>> lc = unshare(conv, (16, 16))
        >>> x = torch.randn(2, 3, 16, 16)
        >>> torch.allclose(lc(x), conv(x), atol=1e-6)
        True
    """
    if input_size is None:
        if example_input is None:
            raise ArgumentError("unshare: pass input_size= or example_input=")
        spatial = conv.weight.dim() - 2
        input_size = tuple(example_input.shape[-spatial:])
    if not (tie is None or tie == "keep" or isinstance(tie, Tie)):
        raise TieTypeError(f"unshare: tie must be 'keep', None or a Tie, got {tie!r}")
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
            + (" (there is no 3-d transposed locally connected layer)"
               if isinstance(conv, nn.ConvTranspose3d) else "")
        )  # fmt: skip
    locations = conv.weight.dim() - 2
    weight_tie: Tie | None
    bias_tie: Tie | None = None
    if tie == "keep":
        kept = _kernel_tie(conv, "weight")
        weight_tie = None if kept is None else _at_every_location(kept, locations, "weight")
        kept_bias = _kernel_tie(conv, "bias") if conv.bias is not None else None
        if kept_bias is not None:
            bias_tie = _at_every_location(kept_bias, locations, "bias")
    else:
        weight_tie = tie if isinstance(tie, Tie) else None
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
        tie=weight_tie,
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
            groups=conv.groups,
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
    if bias_tie is not None:
        register_tie(layer, "bias", bias_tie)
    with torch.no_grad():
        _assign(layer, "weight", weight.expand_as(layer.weight))
        if conv.bias is not None and layer.bias is not None:
            _assign(layer, "bias", conv.bias.detach().expand_as(layer.bias))
    return layer


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)


def unshare_modules(
    model: nn.Module,
    example_input: Any,
    where: Callable[[str, nn.Module], bool] | None = None,
    *,
    tie: Tie | str | None = "keep",
) -> list[tuple[str, str, int, int]]:
    """Unshare the convs of ``model`` in place: each ``Conv1d/2d/3d`` and ``ConvTranspose1d/2d``
    (narrowed by ``where(qualified_name, module)``, as in :func:`tietorch.tie_modules`) becomes
    the equal locally connected layer (:func:`unshare`, ``tie`` as there), its input size found
    from one forward of ``example_input`` (a tensor, or a tuple of the model's arguments).

    All or nothing: every layer is built before any is swapped in, so a refusal leaves the
    model as it was. Returns ``(name, conv class, parameters before, after)`` per layer.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
        >>> unshare_modules(net, torch.randn(1, 1, 5, 5))
        [('0', 'Conv2d', 20, 180)]
        >>> type(net[0]).__name__
        'LocallyConnected2d'
    """
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, _CONVS) and (where is None or where(name, module))
    ]
    sizes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            if name in sizes:
                raise TargetError(
                    f"unshare_modules: {name} ({type(module).__name__}) runs more than once per "
                    "forward; its locations would be shared between calls: exclude it with where="
                )
            weight = module.weight
            assert isinstance(weight, Tensor)
            sizes[name] = tuple(args[0].shape[2 - weight.dim() :])

        return record

    hooks = [module.register_forward_pre_hook(recorder(name)) for name, module in chosen]
    try:
        with torch.no_grad():
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    built = []
    for name, conv in chosen:
        if name not in sizes:
            raise TargetError(
                f"unshare_modules: {name} ({type(conv).__name__}) did not run in the forward of "
                "the example input, so its input size is unknown: exclude it with where="
            )
        layer = unshare(conv, sizes[name], tie=tie)
        built.append((name, conv, layer))
    report = []
    for name, conv, layer in built:  # nothing can fail from here on
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
        report.append(
            (
                name,
                parametrize.type_before_parametrizations(conv).__name__,
                sum(p.numel() for p in conv.parameters()),
                sum(p.numel() for p in layer.parameters()),
            )
        )
    return report
