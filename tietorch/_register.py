"""Applying ties to modules: register, remove, bake, tie a whole model."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._layout import Init, TieLayout, check_init
from ._parametrization import TieParametrization, _install, _label, _tie_of
from ._tie import Tie, solved_layout
from ._torch_compat import add_setattr_check, parametrization_list, parametrization_lists
from ._transaction import all_or_nothing
from .errors import ShapeError, TargetError, TieTypeError, _context

__all__ = ["register_tie", "remove_tie", "bake", "tie_modules"]

_log = logging.getLogger("tietorch")

# Buffers their module overwrites in place during training: tying one would freeze it (the
# module writes into a temporary rebuilt from the free vector). The rule for other modules: a
# tensor a module assigns or updates in place in forward() cannot be tied.
_UPDATED_IN_PLACE = (
    (nn.modules.batchnorm._NormBase, ("running_mean", "running_var", "num_batches_tracked")),
)
_LOW_PRECISION_UNSUPPORTED = tuple(
    getattr(torch, name)
    for name in (
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
    )
    if hasattr(torch, name)
)


def _refuse_shared(model: nn.Module, names: list[str], where: str) -> None:
    """Refuse to tie a Parameter object that ``model`` also holds under another name.

    Registration turns the Parameter itself into the free vector, so every other module holding
    the same object would silently get the free vector as its weight. Tie such tensors together
    with ``tie_tensors`` after giving each its own Parameter.
    """
    holders: dict[int, list[str]] = {}
    for qualname, held in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        holders.setdefault(id(held), []).append(qualname)
    for group in holders.values():
        if len(group) > 1 and any(n in names for n in group):
            raise TargetError(
                f"{where}: {' and '.join(group)} are one tensor object shared by several "
                "modules; give each its own nn.Parameter and tie them with "
                "tie_tensors([...]) instead"
            )


def _references(holder: dict[str, Any], name: str) -> int:
    return sys.getrefcount(holder[name])


# What sys.getrefcount reports, through _references, for a tensor held by one dict alone: more
# means someone else holds it too (measured rather than assumed, as interpreters differ).
_SOLE_HOLDER_REFERENCES = _references({"t": torch.zeros(0)}, "t")


def _other_holders(module: nn.Module, name: str) -> list[str]:
    """The other modules that hold the very Parameter (or buffer) object ``module.<name>``.

    Registration turns that object into the free vector in place (parametrize ``set_()``s it so
    an optimizer need not be rebuilt), so another module holding it, such as transformers'
    output layer with ``tie_word_embeddings=True``, would silently get the free vector as its
    weight. Without a model to search, the holders are found through the garbage collector's
    referrers, and only when the reference count says there are other references at all.
    """
    holder = module._parameters if name in module._parameters else module._buffers
    if name not in holder or _references(holder, name) <= _SOLE_HOLDER_REFERENCES:
        return []
    tensor = holder[name]
    assert tensor is not None
    found = _holders_among_referrers(module, name, tensor)
    if found:  # confirm: garbage not yet collected (a replaced module) may hold it too
        gc.collect()
        found = _holders_among_referrers(module, name, tensor)
    return found


def _holders_among_referrers(module: nn.Module, name: str, tensor: Tensor) -> list[str]:
    found: list[str] = []
    for ref in gc.get_referrers(tensor):
        if not isinstance(ref, dict):
            continue
        held: dict[str, Any] = ref
        # A module's _parameters dict is referred to by the module itself (its attributes
        # stored inline) or by its __dict__.
        for outer in gc.get_referrers(ref):
            owners = [outer] if isinstance(outer, nn.Module) else []
            if isinstance(outer, dict):
                owners = [m for m in gc.get_referrers(outer) if isinstance(m, nn.Module)]
            for owner in owners:
                if isinstance(owner, parametrize.ParametrizationList):
                    # parametrize's own slot: after remove_tie the untied module holds the
                    # `original` its old list (still referenced by tie records) held
                    continue
                if (
                    owner.__dict__.get("_parameters") is ref
                    or owner.__dict__.get("_buffers") is ref
                ):
                    found += [
                        _label(owner, key)
                        for key, value in held.items()
                        if value is tensor and (owner, key) != (module, name)
                    ]
    return found


def _refuse_held_elsewhere(module: nn.Module, name: str, where: str) -> None:
    others = _other_holders(module, name)
    if others:
        raise TargetError(
            f"{where}: {_label(module, name)} of shape {tuple(getattr(module, name).shape)} is "
            f"one nn.Parameter object also held by {', '.join(others)}; tying it would change "
            "the other holder too. Give each module its own nn.Parameter and tie them with "
            "tie_tensors([...]) (for a transformers model: "
            "tietorch.integrations.transformers.tie_embeddings(model))"
        )


def _tieable(module: nn.Module, name: str, where: str, tie: Tie | None = None) -> Tensor:
    """The untied floating-point tensor ``module.<name>``, or a clear error (``where``: caller)."""
    if not isinstance(module, nn.Module):
        raise TieTypeError(f"{where}: expected an nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TieTypeError(f"{where}: the tensor name must be a str, got {name!r}")
    if parametrize.is_parametrized(module, name):
        raise TargetError(
            f"{where}: {_label(module, name)} is already tied or parametrized; a tie must be its "
            "first parametrization (untie it, or register the tie before the others)"
        )
    _refuse_held_elsewhere(module, name, where)  # before this frame holds the tensor too
    tensor = getattr(module, name, None)
    label = _label(module, name)
    if not isinstance(tensor, Tensor):
        owner = label.rsplit(".", 1)[0]
        raise TargetError(f"{where}: {owner} has no tensor named {name!r}")
    shape = tuple(tensor.shape)
    if not tensor.is_floating_point() or tensor.dtype in _LOW_PRECISION_UNSUPPORTED:
        raise TieTypeError(
            f"{where}: cannot tie {label} of shape {shape}: it is {tensor.dtype} (floating point "
            "only: float16, bfloat16, float32 or float64; tie in one of those, then convert)"
        )
    for kind, names in _UPDATED_IN_PLACE:
        if isinstance(module, kind) and name in names:
            raise TargetError(
                f"{where}: cannot tie {label} of shape {shape}"
                f"{'' if tie is None else f' with {tie!r}'}: {type(module).__name__} updates "
                "it in place during training, and a tied tensor is rebuilt from its free vector "
                "on every read, so the updates would be lost. Tie the affine weight and bias "
                "instead"
            )
    if tensor.is_inference():
        raise TargetError(
            f"{where}: cannot tie {label} of shape {shape}: it was created under "
            "torch.inference_mode(), so it cannot take part in autograd; build the module "
            "outside inference_mode (torch.no_grad() is fine)"
        )
    return tensor


def _prepare(
    module: nn.Module, name: str, tie: Tie, call: str = "register_tie", label: str | None = None
) -> tuple[Tensor, TieLayout]:
    """Everything that can refuse a tie, run before the module is touched. Errors name the
    public ``call`` and the tensor (``label``, default ``Linear.weight``); the tie's own errors
    add the tie and the shape, so each is said once."""
    tensor = _tieable(module, name, call, tie)
    where = _label(module, name)
    if not isinstance(tie, Tie):
        raise TieTypeError(
            f"register_tie({where}): expected a tietorch.Tie, got {type(tie).__name__}"
        )
    existing = _tie_of(module, name)
    if existing is not None:
        raise TargetError(
            f"register_tie({where}): already tied with {existing.tie!r}; register "
            f"`old & new` after remove_tie(), so both constraints are solved together"
        )
    with _context(f"{call}({where if label is None else label})"):
        layout = solved_layout(tie, tuple(tensor.shape))
    return tensor, layout


def register_tie(module: nn.Module, name: str, tie: Tie, *, init: Init = "project") -> float:
    """Tie ``module.<name>`` with ``tie``; the module then trains only the free parameters.

    The tensor becomes a parametrization whose ``original`` (the real ``nn.Parameter``, seen by
    ``parameters()``, optimizers and ``state_dict()``) is the minimal free vector, and
    ``module.<name>`` is rebuilt from it by a gather, so it satisfies the tie exactly.

    The initial free vector is the orthogonal projection of the current tensor onto the tied
    subspace (the signed mean of each class), so a pretrained layer keeps as much as it can.
    Averaging ``n`` i.i.d. entries shrinks their spread by ``sqrt(n)``: for a *fresh* layer pass
    ``init="preserve_std"``, which scales each free parameter by ``sqrt(class size)`` so the
    entries keep the standard deviation of the layer's own initialization.

    Register ties *before* building the optimizer: the Parameter object is kept but changes
    shape (it *becomes* the free vector), so it must not be shared with another module
    (``head.weight = emb.weight``): tie shared tensors with :func:`tie_tensors` instead
    (:func:`tie_modules` and :func:`tie_model` refuse shared objects). Assigning
    ``module.<name> = W`` later projects ``W`` the same way.

    Returns:
        The relative distance of the original tensor from the constraint,
        ``||W - P(W)|| / ||W||`` (0 when it already satisfied it); also logged on the
        ``"tietorch"`` logger.

    Example:
        >>> import torch, tietorch
        >>> conv = torch.nn.Conv2d(4, 4, 3)
        >>> error = tietorch.register_tie(conv, "weight", tietorch.SymmetricFlip())
        >>> torch.equal(conv.weight, conv.weight.transpose(0, 1).flip(2, 3))
        True
        >>> [p.numel() for p in conv.parameters()]  # bias, then 4*3/2*9 + 4*5 free weights
        [4, 74]
    """
    check_init(init)
    tensor, layout = _prepare(module, name, tie)
    where = _label(module, name)
    param = TieParametrization(tie, layout, tensor)
    theta, error = layout.initial_theta(tensor, init)
    with all_or_nothing([module]):
        _install(module, name, param, theta)
    param.projection_error = error
    _log.info(
        "tied %s with %r: %d -> %d parameters, relative projection error %.3g",
        where,
        tie,
        layout.numel,
        layout.n_free,
        error,
    )
    return error


def remove_tie(module: nn.Module, name: str) -> None:
    """Untie ``module.<name>``: it becomes a plain ``nn.Parameter`` holding the current value.

    >>> import torch, tietorch
    >>> lin = torch.nn.Linear(3, 3)
    >>> _ = tietorch.register_tie(lin, "weight", tietorch.Symmetric())
    >>> tietorch.remove_tie(lin, "weight")
    >>> lin.weight.shape, torch.equal(lin.weight, lin.weight.T)
    (torch.Size([3, 3]), True)
    """
    where = _label(module, name)
    param = _tie_of(module, name)
    if param is None:
        raise TargetError(f"remove_tie: {where} is not tied")
    if len(parametrization_list(module, name)) > 1:
        raise TargetError(
            f"remove_tie: {where} has other parametrizations on top of its tie; remove those first"
        )
    group = param.group
    followers = () if group is None else group.followers
    if len(followers):
        raise TargetError(
            f"remove_tie: {where} holds the free vector of a group of tied tensors that "
            f"{len(followers)} other tensor(s) still read; remove_tie those first, or bake(model)"
        )
    owner = param.follows
    view, param.view = param.view, None  # untied, the tensor is a copy: never a view of theta
    with all_or_nothing([module]):
        try:
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        except BaseException:
            param.view = view
            raise
        if owner is not None and group is not None and not group.was_buffer:
            # Its placeholder was a buffer, so parametrize restored a buffer: give back what
            # the tensor was before it joined the group.
            value = module._buffers.pop(name)
            assert value is not None
            module.register_parameter(name, nn.Parameter(value.detach(), group.requires_grad))
    if owner is not None and group is not None:  # last: nothing below can fail
        lead = owner[0]
        assert isinstance(lead, TieParametrization) and lead.group is not None
        lead.group.followers.discard(param)


# The attributes that state a layer's weight shape; changing one on a tied layer resizes
# nothing (the weight is rebuilt from the free vector), so it is refused.
_SIZE_ATTRIBUTES = frozenset(
    (
        "num_embeddings",
        "embedding_dim",
        "in_features",
        "out_features",
        "in_channels",
        "out_channels",
    )
)


def _refuse_resize(module: nn.Module, name: str, value: object) -> None:
    """Setattr check on tied modules: refuse a size change (e.g. transformers'
    ``resize_token_embeddings``) before anything is modified."""
    if name not in _SIZE_ATTRIBUTES or module.__dict__.get(name, value) == value:
        return
    param = _tie_of(module, "weight")
    if param is None:
        return
    raise ShapeError(
        f"{_label(module, 'weight')} is tied with {param.tie!r} (shape {tuple(param.shape)}): "
        f"setting {name} from {module.__dict__[name]} to {value} would resize the layer in "
        "place, which a tied tensor cannot follow (its value is rebuilt from the free vector). "
        "For transformers' resize_token_embeddings use "
        "tietorch.integrations.transformers.resize_token_embeddings(model, n); otherwise "
        "remove_tie (a group's other members first), resize, and tie again"
    )


add_setattr_check(_refuse_resize)


def _tied_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str, TieParametrization]]:
    found = []
    for qualname, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for name in list(parametrization_lists(module).keys()):
                param = _tie_of(module, name)
                if param is not None:
                    found.append((qualname, module, name, param))
    return found


def bake(model: nn.Module) -> nn.Module:
    """Untie every tied tensor of ``model`` in place (for export); returns ``model``.

    >>> import torch, tietorch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3))
    >>> _ = tietorch.tie_modules(net, tietorch.KernelSymmetry("D4"))
    >>> type(tietorch.bake(net)[0]) is torch.nn.Conv2d
    True
    """
    tied = _tied_tensors(model)
    for qualname, module, name, _ in tied:  # check all first: never leave a model half-baked
        if len(parametrization_list(module, name)) > 1:
            raise TargetError(
                f"bake: {qualname or type(model).__name__}.{name} has other parametrizations on "
                "top of its tie; remove those first (nothing was untied)"
            )
    # Members of a group read their owner's free vector: untie them before the owner.
    tied.sort(key=lambda item: item[3].follows is None)
    with all_or_nothing([model]):
        for _, module, name, _ in tied:
            remove_tie(module, name)
    return model


def tie_modules(
    model: nn.Module,
    tie: Tie,
    types: type[nn.Module] | tuple[type[nn.Module], ...] = (nn.Conv2d,),
    name: str = "weight",
    where: Callable[[str, nn.Module], bool] | None = None,
    *,
    init: Init = "project",
) -> dict[str, float]:
    """Tie ``<name>`` of every existing module of ``model`` that is an instance of ``types``.

    ``where(qualified_name, module)`` narrows the choice; modules without a tensor called
    ``name`` (e.g. ``bias=False``) are skipped. All shapes are checked first, so a refused tie
    leaves the whole model untouched.

    Returns:
        ``{qualified name: relative projection error}`` for every tensor it tied.

    Example:
        >>> import torch, tietorch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(8, 8, 3))
        >>> sorted(tietorch.tie_modules(net, tietorch.KernelSymmetry("D4")))
        ['0', '2']
    """
    check_init(init)
    if not isinstance(model, nn.Module):
        raise TieTypeError(f"tie_modules: expected an nn.Module, got {type(model).__name__}")
    kinds = types if isinstance(types, tuple) else (types,)
    if not all(isinstance(t, type) and issubclass(t, nn.Module) for t in kinds):
        raise TieTypeError(
            f"tie_modules: types must be nn.Module classes (e.g. torch.nn.Linear), got {types!r}"
        )
    targets = [
        (qualname, module)
        for qualname, module in model.named_modules()
        if isinstance(module, types)
        and isinstance(getattr(module, name, None), Tensor)
        and (where is None or where(qualname, module))
    ]
    _refuse_shared(model, [f"{q}.{name}" if q else name for q, _ in targets], "tie_modules")
    for qualname, module in targets:
        _prepare(module, name, tie, "tie_modules", f"{qualname}.{name}" if qualname else name)
    with all_or_nothing([model]):
        return {
            qualname: register_tie(module, name, tie, init=init) for qualname, module in targets
        }
