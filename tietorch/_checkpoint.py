"""Dense checkpoints: load an untied state dict into a tied model, and the reverse."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ._parametrization import TieParametrization
from ._register import _tied_tensors, relative_error
from ._tie import gather, signed_mean

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
    replace: dict[str, tuple[str, Tensor]] = {}
    extra: dict[str, Tensor] = {}  # group members: no free vector of their own
    for qualname, module, name, param in _tied_tensors(model):
        dense_key, free_key = _keys(qualname, name)
        with torch.no_grad():
            dense = getattr(module, name).detach().clone()
        if param.follows is None:
            replace[free_key] = (dense_key, dense)
        else:
            extra[dense_key] = dense
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if key in replace:
            dense_key, dense = replace[key]
            out[dense_key] = dense
        else:
            out[key] = value
    out.update(extra)
    return out


def load_dense_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True
) -> dict[str, float]:
    """Load a dense (untied) state dict into a tied ``model``, projecting each tied tensor.

    Each dense tensor is projected orthogonally onto its tie (the signed mean of each class);
    the tensors of a group (:func:`tie_tensors`) are projected together. Entries for tensors
    that are not tied, and free vectors already in tied form, load as usual.

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
    tied = _tied_tensors(model)
    free_keys = {
        id(module.parametrizations[name]): _keys(qualname, name)[1]
        for qualname, module, name, param in tied
        if param.follows is None
    }
    # Per free vector: signed sums and counts over every dense tensor that reads it.
    totals: dict[int, list[Any]] = {}
    loaded: list[tuple[str, Tensor, TieParametrization, int]] = []
    for qualname, module, name, param in tied:
        dense_key, _ = _keys(qualname, name)
        dense = converted.pop(dense_key, None)
        if dense is None:
            continue
        if tuple(dense.shape) != param.shape:
            raise ValueError(
                f"load_dense_state_dict: '{dense_key}' is tied with {param.tie!r} on shape "
                f"{param.shape}, but the state dict holds shape {tuple(dense.shape)}"
            )
        owner = param.follows if param.follows is not None else module.parametrizations[name]
        dense = dense.to(param.inverse_counts)
        ones = torch.ones_like(param.inverse_counts)
        with torch.no_grad():
            sums = signed_mean(dense, param.index, param.sign, ones)  # per-class signed sums
        counts = param._cpu_counts.to(sums)
        zeros = torch.zeros_like(sums)
        entry = totals.setdefault(id(owner), [owner, zeros, zeros.clone()])
        entry[1] += sums
        entry[2] += counts
        loaded.append((dense_key, dense, param, id(owner)))
    thetas = {}
    for key, (owner, sums, counts) in totals.items():
        if key not in free_keys:
            raise ValueError(
                "load_dense_state_dict: a tensor of this model reads the free vector of a module "
                "outside it (a tie_tensors group); load into the model that holds the whole group"
            )
        current = converted.get(free_keys[key], owner.original.detach()).to(sums)
        thetas[key] = torch.where(counts > 0, sums / counts.clamp_min(1), current)
        converted[free_keys[key]] = thetas[key]
    errors = {
        dense_key: relative_error(dense, gather(thetas[key], param.index, param.sign, param.shape))
        for dense_key, dense, param, key in loaded
    }
    model.load_state_dict(converted, strict=strict)
    return errors
