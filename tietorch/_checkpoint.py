"""Dense checkpoints: load an untied state dict into a tied model, and the reverse."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ._register import _tied_tensors

__all__ = ["dense_state_dict", "load_dense_state_dict"]


def _keys(qualname: str, name: str) -> tuple[str, str]:
    prefix = f"{qualname}." if qualname else ""
    return f"{prefix}{name}", f"{prefix}parametrizations.{name}.original"


def dense_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict ``model`` would have untied: full tensors under their plain names.

    For people without tietorch, or another framework; the model itself is not changed.

    >>> import torch, tietorch
    >>> lin = torch.nn.Linear(3, 3)
    >>> _ = tietorch.register_tie(lin, "weight", tietorch.Symmetric())
    >>> sorted(tietorch.dense_state_dict(lin)), sorted(lin.state_dict())
    (['bias', 'weight'], ['bias', 'parametrizations.weight.original'])
    """
    replace = {}
    for qualname, module, name, _ in _tied_tensors(model):
        dense_key, free_key = _keys(qualname, name)
        with torch.no_grad():
            replace[free_key] = (dense_key, getattr(module, name).detach().clone())
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if key in replace:
            dense_key, dense = replace[key]
            out[dense_key] = dense
        else:
            out[key] = value
    return out


def load_dense_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True
) -> dict[str, float]:
    """Load a dense (untied) state dict into a tied ``model``, projecting each tied tensor.

    Each dense tensor is projected orthogonally onto its tie (the signed mean of each class).
    Entries for tensors that are not tied, and free vectors already in tied form, load as usual.

    Returns:
        ``{tensor name: relative projection error ||W - P(W)|| / ||W||}`` for each tied tensor
        loaded from a dense entry: 0 when the checkpoint already satisfied the tie.

    >>> import torch, tietorch
    >>> dense = torch.nn.Linear(3, 3)
    >>> tied = torch.nn.Linear(3, 3)
    >>> _ = tietorch.register_tie(tied, "weight", tietorch.Symmetric())
    >>> errors = tietorch.load_dense_state_dict(tied, dense.state_dict())
    >>> list(errors), torch.allclose(tied.weight, (dense.weight + dense.weight.T) / 2)
    (['weight'], True)
    """
    converted = dict(state_dict)
    errors: dict[str, float] = {}
    for qualname, _, name, param in _tied_tensors(model):
        dense_key, free_key = _keys(qualname, name)
        dense = converted.pop(dense_key, None)
        if dense is None:
            continue
        if tuple(dense.shape) != param.shape:
            raise ValueError(
                f"load_dense_state_dict: '{dense_key}' is tied with {param.tie!r} on shape "
                f"{param.shape}, but the state dict holds shape {tuple(dense.shape)}"
            )
        with torch.no_grad():
            theta = param.right_inverse(dense)
            projected = param(theta)
            dense = dense.to(projected)
            norm = float(torch.linalg.vector_norm(dense))
            residual = float(torch.linalg.vector_norm(dense - projected))
        converted[free_key] = theta
        errors[dense_key] = residual / norm if norm else 0.0
    model.load_state_dict(converted, strict=strict)
    return errors
