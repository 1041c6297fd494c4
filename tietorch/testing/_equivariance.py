"""``check_equivariance``: a module commutes with a group action, checked on inputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..errors import ArgumentError

__all__ = ["check_equivariance"]


def check_equivariance(
    module: nn.Module,
    in_action: Callable[[Tensor], Tensor],
    out_action: Callable[[Tensor], Tensor],
    inputs: Tensor | None = None,
    input_shape: Sequence[int] | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-5,
) -> float:
    """Assert ``module(in_action(x)) ≈ out_action(module(x))`` and return the largest error.

    ``inputs``: one batch of inputs; or ``input_shape``: random normal inputs of that shape, in
    the module's dtype and on its device. ``in_action`` / ``out_action`` apply one group element
    to a batch (e.g. ``lambda x: x[..., perm]`` for a permutation of the last dim). On failure
    the AssertionError names the largest error, where it is, and the two values.

    Example:
        >>> import torch
        >>> from tietorch import Equivariant, groups, register_tie
        >>> layer = torch.nn.Linear(5, 5, bias=False)
        >>> s5 = groups.symmetric(5)
        >>> _ = register_tie(layer, "weight", Equivariant(s5, s5))
        >>> perm = torch.randperm(5)
        >>> act = lambda x: x[..., perm]
        >>> check_equivariance(layer, act, act, input_shape=(8, 5)) < 1e-6
        True
    """
    if (inputs is None) == (input_shape is None):
        raise ArgumentError("check_equivariance: pass exactly one of inputs= and input_shape=")
    if inputs is None:
        assert input_shape is not None
        like = next(iter(module.parameters()), None)
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        device = like.device if like is not None else None
        inputs = torch.randn(tuple(input_shape), dtype=dtype, device=device)
    with torch.no_grad():
        acted_first = module(in_action(inputs))
        acted_after = out_action(module(inputs))
    if acted_first.shape != acted_after.shape:
        raise AssertionError(
            f"check_equivariance: module(in_action(x)) has shape {tuple(acted_first.shape)}, "
            f"out_action(module(x)) {tuple(acted_after.shape)}"
        )
    error = (acted_first - acted_after).abs()
    worst = float(error.max()) if error.numel() else 0.0
    bound = atol + rtol * acted_after.abs()
    if bool((error > bound).any()):
        where = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))
        raise AssertionError(
            f"check_equivariance: not equivariant: max error {worst:.3g} at index {where} "
            f"(module(in_action(x)) = {float(acted_first[where]):.6g}, out_action(module(x)) = "
            f"{float(acted_after[where]):.6g}; atol={atol}, rtol={rtol})"
        )
    return worst


def field_action(group: str, rep: str, element: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    """The action of a p4 / p4m ``element`` ``(m, r)`` on feature maps ``(..., C, H, W)`` of
    ``rep`` fields (see :class:`tietorch.GroupConv` for the channel order): every map is
    mirrored ``m`` times (last dim) then rotated ``r`` times by 90 degrees, and in a regular
    field the channel of group element ``g`` moves to ``element * g``.

    Example:
        >>> import torch
        >>> x = torch.arange(8.0).view(1, 8, 1, 1)  # one p4m regular field, 1 x 1 maps
        >>> field_action("p4m", "regular", (0, 1))(x).flatten().tolist()  # rotation: g -> r g
        [3.0, 0.0, 1.0, 2.0, 7.0, 4.0, 5.0, 6.0]
    """
    from ..ties.group_conv import compose, elements

    group_elements = elements(group)
    if tuple(element) not in group_elements:
        raise ArgumentError(f"field_action: {element!r} is not an element of {group!r}")
    if rep not in ("trivial", "regular"):
        raise ArgumentError(f"field_action: rep must be 'trivial' or 'regular', got {rep!r}")
    m, r = element
    inverse = (1, r) if m else (0, -r % 4)
    # new channel j reads old channel element^-1 j
    source = [group_elements.index(compose(inverse, e)) for e in group_elements]

    def act(x: Tensor) -> Tensor:
        y = x.flip(-1) if m else x
        y = torch.rot90(y, r, dims=(-2, -1))
        if rep == "regular":
            order = len(group_elements)
            fields = y.unflatten(-3, (y.shape[-3] // order, order))
            y = fields[..., source, :, :].flatten(-4, -3)
        return y

    return act
