"""Dense checkpoints: load an untied state dict into a tied model, and the reverse."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrize import ParametrizationList

from ._dense import DensePart, free_from_dense, rebuilt
from ._parametrization import _METADATA_KEY, TieParametrization
from ._register import _tied_tensors
from ._torch_compat import original, parametrization_list
from ._transaction import all_or_nothing
from .errors import CheckpointError, TieTypeError

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
    return densified(model, model.state_dict())


def densified(model: nn.Module, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict`` (``model``'s, or one shaped like it) with each free vector of ``model``'s
    ties replaced, in place in the order, by the dense tensors that read it under their own
    names; every other entry is kept as it is."""
    readers: dict[str, list[tuple[str, TieParametrization]]] = {}
    free_keys = {}
    for qualname, module, name, param in _tied_tensors(model):
        if param.follows is None:
            free_keys[id(parametrization_list(module, name))] = _keys(qualname, name)[1]
    for qualname, module, name, param in _tied_tensors(model):
        owner = param.follows if param.follows is not None else parametrization_list(module, name)
        if id(owner) in free_keys:  # a member of a group owned outside: nothing to read
            readers.setdefault(free_keys[id(owner)], []).append((_keys(qualname, name)[0], param))
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key not in readers or not isinstance(value, Tensor):
            out[key] = value
            continue
        with torch.no_grad():
            for dense_key, param in readers[key]:
                # a copy, never a view: safetensors refuses tensors that share memory
                out[dense_key] = rebuilt(param, value.detach()).clone()
    return out


def dense_parts(
    model: nn.Module, state_dict: dict[str, Any], where: str
) -> dict[str, tuple[ParametrizationList, TieParametrization, list[DensePart]]]:
    """Take the dense entries of ``model``'s tied tensors out of ``state_dict``, grouped by the
    free vector they read: ``{free key: (its ParametrizationList, its owner's parametrization,
    the dense parts)}``. Checks each entry's type and shape; ``where`` names the caller."""
    tied = _tied_tensors(model)
    free_keys = {
        id(parametrization_list(module, name)): _keys(qualname, name)[1]
        for qualname, module, name, param in tied
        if param.follows is None
    }
    groups: dict[str, tuple[ParametrizationList, TieParametrization, list[DensePart]]] = {}
    for qualname, module, name, param in tied:
        dense_key, _ = _keys(qualname, name)
        dense = state_dict.pop(dense_key, None)
        if dense is None:
            continue
        if not isinstance(dense, Tensor):
            raise TieTypeError(
                f"{where}: '{dense_key}' (tied with {param.tie!r}, shape {param.shape}) is a "
                f"{type(dense).__name__}; expected a torch.Tensor (convert numpy arrays with "
                "torch.from_numpy)"
            )
        if tuple(dense.shape) != param.shape:
            raise CheckpointError(
                f"{where}: '{dense_key}' is tied with {param.tie!r} on shape {param.shape}, but "
                f"the state dict holds shape {tuple(dense.shape)}"
            )
        if dense.is_complex():
            raise TieTypeError(f"{where}: '{dense_key}' is {dense.dtype}; ties are real")
        owner = param.follows if param.follows is not None else parametrization_list(module, name)
        if id(owner) not in free_keys:
            raise CheckpointError(
                f"{where}: '{dense_key}' reads the free vector of a module outside this model "
                "(a tie_tensors group); load into the model that holds the whole group"
            )
        lead = owner[0]
        assert isinstance(lead, TieParametrization)
        entry = groups.setdefault(free_keys[id(owner)], (owner, lead, []))
        entry[2].append((param, dense_key, dense))
    return groups


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
    if not isinstance(model, nn.Module):
        raise TieTypeError(
            f"load_dense_state_dict: expected an nn.Module, got {type(model).__name__}"
        )
    if not isinstance(state_dict, Mapping):
        raise TieTypeError(
            f"load_dense_state_dict: expected a state dict (a mapping of names to tensors), got "
            f"{type(state_dict).__name__}"
        )
    converted = dict(state_dict)
    groups = dense_parts(model, converted, "load_dense_state_dict")
    errors: dict[str, float] = {}
    for free_key, (owner, lead, parts) in groups.items():
        current = converted.get(free_key, original(owner))
        if not isinstance(current, Tensor) or tuple(current.shape) != (lead.n_free,):
            raise CheckpointError(
                f"load_dense_state_dict: '{free_key}' should be the free vector of "
                f"{lead.tie!r} with {lead.n_free} entries, got "
                f"{tuple(current.shape) if isinstance(current, Tensor) else type(current).__name__}"
            )
        converted[free_key], distances = free_from_dense(lead, parts, current, exact=False)
        errors.update(distances)
    loading: OrderedDict[str, Any] = OrderedDict(converted)
    metadata = getattr(state_dict, "_metadata", None)
    if isinstance(metadata, Mapping):
        # Keep the checkpoint's metadata (module versions, and the identities of the free
        # vectors it holds in tied form, checked on load), less the identities of the tensors
        # loaded from dense entries: their free vectors were just made for this model's ties.
        kept = OrderedDict(
            (key, dict(value) if isinstance(value, Mapping) else value)
            for key, value in metadata.items()
        )
        for dense_key in errors:
            module_key, _, name = dense_key.rpartition(".")
            record = kept.get(module_key)
            if isinstance(record, dict) and isinstance(record.get(_METADATA_KEY), Mapping):
                record[_METADATA_KEY] = {
                    k: v for k, v in record[_METADATA_KEY].items() if k != name
                }
        loading._metadata = kept  # type: ignore[attr-defined]
    with all_or_nothing([model], copy_values=True):  # load_state_dict copies in place
        model.load_state_dict(loading, strict=strict)
    return errors
