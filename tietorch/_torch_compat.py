"""Every place tietorch relies on torch internals, in one module.

Tested with torch 2.13 (the CPU build; the only torch this project's machines can install).
``torch>=2.2`` is the declared lower bound: what the code is written for (the torch < 2.5 and
< 2.3 fallbacks below), not a version the suite runs on. Public APIs are used wherever they
exist (``parametrize.type_before_parametrizations``, ``parametrize.is_parametrized``,
``register_parametrization``); what remains works around two behaviours of
``torch.nn.utils.parametrize`` that have no public switch:

1. **Deepcopy shares the generated class.** ``register_parametrization`` swaps the module's
   class for a generated ``Parametrized<Cls>`` holding one property per tensor, whose closure
   points at the *original* module. ``copy.deepcopy`` keeps that class, so under
   ``parametrize.cached()`` the copy returns the original's weight, and removing a
   parametrization from the copy deletes the property the original still needs. Fix: a
   ``__deepcopy__`` that gives the copy a class of its own and re-injects the properties with
   parametrize's private ``_inject_property``. Guarded by
   ``tests/test_toolchain.py::test_deepcopy_is_independent_under_cache_and_removal``,
   ``tests/test_group.py::test_deepcopy_keeps_the_group_inside_the_copy``.
2. **Parametrized modules refuse to pickle** (the generated class raises in ``__getstate__``),
   so ``torch.save(model)`` fails. Fix: a ``__reduce_ex__`` that pickles the plain class plus
   the names of the parametrized tensors and rebuilds the generated class on load with the
   private ``_inject_new_class``/``_inject_property``. Guarded by
   ``tests/test_toolchain.py::test_whole_model_torch_save_works_and_stays_tied``,
   ``tests/test_toolchain.py::test_torch_save_of_a_lambda_tie_says_what_to_do``,
   ``tests/test_group.py::test_group_checkpoints_safetensors_and_torch_save``.

3. **A layer's size attributes are plain attributes.** Code that resizes a layer in place
   (transformers' ``resize_token_embeddings`` sets ``embedding.weight.data = ...`` and then
   ``num_embeddings``) changes nothing on a tied tensor (``weight`` is recomputed from the free
   vector) yet changes the attribute, which corrupts the module silently. Fix: a
   ``__setattr__`` on the generated class that runs the registered checks first, so the
   change is refused before anything is modified. Guarded by
   ``tests/test_transformers.py::test_resize_token_embeddings_of_a_tied_model_raises``.

4. **A forward of a tied module's own.** ``fast_forward`` gives a tied layer a cheaper forward
   by setting ``forward`` on parametrize's generated class (per instance, never on
   ``nn.Conv2d`` itself), so ``remove_parametrizations`` restoring the plain class drops it
   with the tie. Pickles name the class members tietorch added, and rebuild them (2.); the
   padding a non-zero ``padding_mode`` applies is read from the conv's private
   ``_reversed_padding_repeated_twice``, which ``nn.Conv*d._conv_forward`` itself uses.
   Guarded by ``tests/test_fast.py``.

Also here: the optional import of ``DTensor`` (FSDP2's sharded parameters), absent from builds
without ``torch.distributed``, and ``Module._register_load_state_dict_pre_hook`` (private on
torch < 2.4, where the public ``register_load_state_dict_pre_hook`` does not exist) and
``Module._register_state_dict_hook`` (torch < 2.5, before ``register_state_dict_post_hook``):
the two hooks that write and check a tie's identity in checkpoints, guarded by
``tests/test_identity.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

try:  # FSDP2 shards parameters as DTensors; a tie cannot gather from a shard
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - builds without torch.distributed
    DTensor = ()  # type: ignore[assignment,misc]

__all__: list[str] = []

#: Called with the module before it is pickled; raise to refuse (set by the parametrization).
PickleCheck = Callable[[nn.Module], None]
_pickle_checks: list[PickleCheck] = []
#: Called with the module, the attribute name and the new value before a tied module's
#: attribute is set; raise to refuse (set by the registration).
SetattrCheck = Callable[[nn.Module, str, Any], None]
_setattr_checks: list[SetattrCheck] = []


def original_class(module: nn.Module) -> type[nn.Module]:
    """The module's class before parametrize replaced it (public API)."""
    return parametrize.type_before_parametrizations(module)


def register_load_pre_hook(module: nn.Module, hook: Callable[..., None]) -> None:
    """A ``load_state_dict`` pre-hook that gets the module as its first argument and follows
    deepcopies (``with_module=True``: the private spelling exists on every supported torch)."""
    module._register_load_state_dict_pre_hook(hook, with_module=True)


def register_state_dict_post_hook(module: nn.Module, hook: Callable[..., None]) -> None:
    """A ``state_dict`` post-hook ``hook(module, state_dict, prefix, local_metadata)``.

    Public from torch 2.5 (https://github.com/pytorch/pytorch/pull/131690); before, the private
    ``_register_state_dict_hook`` with the same signature (its return value is ignored)."""
    register = getattr(module, "register_state_dict_post_hook", None)
    if register is None:  # pragma: no cover - torch < 2.5
        register = module._register_state_dict_hook
    register(hook)


def add_pickle_check(check: PickleCheck) -> None:
    if check not in _pickle_checks:
        _pickle_checks.append(check)


def add_setattr_check(check: SetattrCheck) -> None:
    if check not in _setattr_checks:
        _setattr_checks.append(check)


def own_class_behaviour(module: nn.Module) -> None:
    """Give parametrize's generated class a correct deepcopy and a working pickle (1. and 2.
    above). Idempotent per generated class."""
    cls = type(module)
    if cls.__dict__.get("_tietorch_class", False):
        return
    cls._tietorch_class = True  # type: ignore[attr-defined]
    cls.__deepcopy__ = _deepcopy_parametrized  # type: ignore[attr-defined]
    cls.__reduce_ex__ = _reduce_parametrized  # type: ignore[assignment,method-assign]
    cls.__setattr__ = _setattr_parametrized  # type: ignore[method-assign]


def _setattr_parametrized(self: nn.Module, name: str, value: Any) -> None:
    for check in _setattr_checks:
        check(self, name, value)
    # On to the original class's own setattr, past the generated class (which FSDP2 and
    # others may subclass again).
    mro = type(self).__mro__
    generated = next(k for k, cls in enumerate(mro) if "_tietorch_class" in cls.__dict__)
    setter = next(
        c.__dict__["__setattr__"] for c in mro[generated + 1 :] if "__setattr__" in c.__dict__
    )
    setter(self, name, value)


def _deepcopy_parametrized(self: nn.Module, memo: dict[int, Any]) -> nn.Module:
    cls = type(self)
    replica = cls.__new__(cls)
    memo[id(self)] = replica
    replica.__dict__ = copy.deepcopy(self.__dict__, memo)
    # A class of its own, with properties bound to the replica (parametrize's own injector).
    members = {
        k: v
        for k, v in cls.__dict__.items()
        if not isinstance(v, property) and k not in ("__dict__", "__weakref__")
    }
    replica.__class__ = type(cls.__name__, cls.__bases__, members)
    for name in parametrization_lists(replica):
        parametrize._inject_property(replica, name)
    return replica


def set_class_member(module: nn.Module, name: str, value: Any) -> None:
    """Set ``name`` on a tied module's own generated class (4. above); pickles keep it."""
    cls = type(module)
    assert cls.__dict__.get("_tietorch_class", False), "not a tied module's generated class"
    setattr(cls, name, value)
    cls._tietorch_members = (*_added_members(cls), name)  # type: ignore[attr-defined]


def del_class_member(module: nn.Module, name: str) -> None:
    """Remove what :func:`set_class_member` set (nothing if it is not there)."""
    cls = type(module)
    if name in _added_members(cls):
        delattr(cls, name)
        cls._tietorch_members = tuple(m for m in _added_members(cls) if m != name)  # type: ignore[attr-defined]


def has_class_member(module: nn.Module, name: str) -> bool:
    return name in _added_members(type(module))


def _added_members(cls: type) -> tuple[str, ...]:
    members = cls.__dict__.get("_tietorch_members", ())
    assert isinstance(members, tuple)
    return members


def _reduce_parametrized(self: nn.Module, protocol: int) -> tuple[Any, ...]:
    # Pickle as the plain class plus the parametrized tensors' names (and the class members
    # tietorch added, module-level functions pickled by name); unpickling rebuilds the
    # generated class.
    for check in _pickle_checks:
        check(self)
    base = original_class(self)
    cls = type(self)
    members = {name: cls.__dict__[name] for name in _added_members(cls)}
    names = tuple(parametrization_lists(self))
    return _rebuild_parametrized, (base, names, members), dict(self.__dict__)


def _rebuild_parametrized(
    base: type[nn.Module], names: tuple[str, ...], members: dict[str, Any] | None = None
) -> nn.Module:
    module = base.__new__(base)
    parametrize._inject_new_class(module)
    own_class_behaviour(module)
    for name in names:
        parametrize._inject_property(module, name)
    for name, value in (members or {}).items():
        set_class_member(module, name, value)
    return module


def conv_padding_for_mode(conv: nn.Module) -> tuple[int, ...]:
    """The ``F.pad`` widths a conv with ``padding_mode != "zeros"`` applies before its kernel."""
    widths = conv._reversed_padding_repeated_twice
    assert isinstance(widths, (list, tuple))
    return tuple(widths)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes matrix products in on ``device_type``, None when it is off."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # pragma: no cover - torch < 2.4 takes no device type
        enabled = (
            torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
        )
    if not enabled:
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # pragma: no cover - torch < 2.4
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype()
        return torch.get_autocast_gpu_dtype()


def parametrization_lists(module: nn.Module) -> nn.ModuleDict:
    """``module.parametrizations``, typed (``nn.Module.__getattr__`` is typed loosely)."""
    lists = module.parametrizations
    assert isinstance(lists, nn.ModuleDict)
    return lists


def parametrization_list(module: nn.Module, name: str) -> parametrize.ParametrizationList:
    """``module.parametrizations[name]``, typed."""
    plist = parametrization_lists(module)[name]
    assert isinstance(plist, parametrize.ParametrizationList)
    return plist


def original(plist: nn.Module) -> Tensor:
    """The tensor a ParametrizationList holds as ``original`` (a tie's free vector)."""
    tensor = plist.original
    assert isinstance(tensor, Tensor)
    return tensor
