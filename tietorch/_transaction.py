"""All or nothing: a call that changes modules either completes or leaves them exactly as
they were (same Parameter objects, values, classes, state-dict keys and hooks).

The public calls validate everything they can before touching a module; this is the net below
that: :func:`all_or_nothing` snapshots the modules a call may touch and, if the call raises,
puts every snapshot back before the error propagates.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__: list[str] = []

# Module attributes a tie (or parametrize) may add, replace or remove.
_STATE = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")
_HOOKS = ("_load_state_dict_pre_hooks", "_state_dict_hooks", "_load_state_dict_post_hooks")


@dataclass
class _ModuleSnapshot:
    module: nn.Module
    cls: type
    state: dict[str, Any]  # shallow copies of the containers: the same Parameter objects
    hooks: dict[str, Any]
    extra: dict[str, Any]  # the other entries of __dict__ (parametrize's, tietorch's)
    tensors: list[tuple[Tensor, Tensor, bool]]  # tensor, its data then, requires_grad then
    properties: dict[str, property]  # parametrize's per-tensor properties on the class

    def restore(self) -> None:
        module = self.module
        with torch.no_grad():
            for tensor, data, requires_grad in self.tensors:
                # registration turns a Parameter into the free vector with set_(): undo it
                if tensor.data_ptr() != data.data_ptr() or tensor.shape != data.shape:
                    tensor.set_(data)  # type: ignore[call-overload]
                elif not torch.equal(tensor, data):
                    tensor.copy_(data)
                tensor.requires_grad_(requires_grad)
        for key in list(module.__dict__):
            if key not in self.extra and key not in self.state and key not in self.hooks:
                del module.__dict__[key]
        module.__dict__.update(self.extra)
        for key, value in self.state.items():
            container = module.__dict__[key]
            container.clear()
            container.update(value)
        for key, value in self.hooks.items():
            container = module.__dict__[key]
            container.clear()
            container.update(value)
        module.__class__ = self.cls
        # remove_parametrizations deletes a property from the (generated) class itself
        if self.cls.__dict__.get("_tietorch_class", False):
            for key, value in list(self.cls.__dict__.items()):
                if isinstance(value, property) and key not in self.properties:
                    delattr(self.cls, key)
            for key, value in self.properties.items():
                if self.cls.__dict__.get(key) is not value:
                    setattr(self.cls, key, value)


def _snapshot(module: nn.Module, copy_values: bool) -> _ModuleSnapshot:
    state = {key: type(module.__dict__[key])(module.__dict__[key]) for key in _STATE}
    hooks = {key: type(module.__dict__[key])(module.__dict__[key]) for key in _HOOKS}
    extra = {
        key: value
        for key, value in module.__dict__.items()
        if key not in state and key not in hooks
    }
    tensors = []
    for tensor in [*module._parameters.values(), *module._buffers.values()]:
        if tensor is None:
            continue
        data = tensor.detach().clone() if copy_values else tensor.detach()
        tensors.append((tensor, data, tensor.requires_grad))
    cls = type(module)
    properties = {k: v for k, v in cls.__dict__.items() if isinstance(v, property)}
    if not cls.__dict__.get("_tietorch_class", False):
        properties = {}  # a user's own class: never touched
    return _ModuleSnapshot(module, cls, state, hooks, extra, tensors, properties)


@contextmanager
def all_or_nothing(modules: Iterable[nn.Module], copy_values: bool = False) -> Iterator[None]:
    """Restore ``modules`` (and all their submodules) if the block raises.

    ``copy_values``: also copy every tensor's values (for calls that write into tensors in
    place, like ``load_state_dict``); otherwise references are enough, because tying replaces
    a tensor's storage and never writes into the old one.
    """
    seen: dict[int, nn.Module] = {}
    for module in modules:
        for sub in module.modules():
            seen.setdefault(id(sub), sub)
    snapshots = [_snapshot(module, copy_values) for module in seen.values()]
    try:
        yield
    except BaseException:
        for snapshot in reversed(snapshots):
            snapshot.restore()
        raise
