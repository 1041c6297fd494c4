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
