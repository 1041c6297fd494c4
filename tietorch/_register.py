"""Applying ties to modules: register, remove, bake, tie a whole model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._parametrization import TieParametrization, _install, _label, _tie_of
from ._tie import Tie, TieLayout

__all__ = ["register_tie", "remove_tie", "bake", "tie_modules"]

_log = logging.getLogger("tietorch")
Init = Literal["project", "preserve_std"]


def _refuse_shared(model: nn.Module, names: list[str], where: str) -> None:
    """Refuse to tie a Parameter object that ``model`` also holds under another name.

    Registration turns the Parameter itself into the free vector, so every other module holding
    the same object would silently get the free vector as its weight. Tie such tensors together
    with ``tie_tensors`` after giving each its own Parameter.
    """
    holders: dict[int, list[str]] = {}
    for qualname, tensor in model.named_parameters(remove_duplicate=False):
        holders.setdefault(id(tensor), []).append(qualname)
    for qualname, tensor in model.named_buffers(remove_duplicate=False):
        holders.setdefault(id(tensor), []).append(qualname)
    for group in holders.values():
        if len(group) > 1 and any(n in names for n in group):
            raise ValueError(
                f"{where}: {' and '.join(group)} are one tensor object shared by several "
                "modules; give each its own nn.Parameter and tie them with "
                "tie_tensors([...]) instead"
            )


def _check_init(init: str) -> None:
    if init not in ("project", "preserve_std"):
        raise ValueError(f"init must be 'project' or 'preserve_std', got {init!r}")


def _tieable(module: nn.Module, name: str, where: str) -> Tensor:
    """The untied floating-point tensor ``module.<name>``, or a clear error (``where``: caller)."""
    if parametrize.is_parametrized(module, name):
        raise ValueError(
            f"{where}: {_label(module, name)} is already tied or parametrized; a tie must be its "
            "first parametrization (untie it, or register the tie before the others)"
        )
    tensor = getattr(module, name, None)
    if not isinstance(tensor, Tensor):
        owner = _label(module, name).rsplit(".", 1)[0]
        raise ValueError(f"{where}: {owner} has no tensor named {name!r}")
    if not tensor.is_floating_point():
        raise TypeError(f"{where}: cannot tie a {tensor.dtype} tensor (floating point only)")
    return tensor


def _prepare(module: nn.Module, name: str, tie: Tie) -> tuple[Tensor, TieLayout]:
    """Everything that can refuse a tie, run before the module is touched."""
    where = _label(module, name)
    if not isinstance(tie, Tie):
        raise TypeError(f"register_tie({where}): expected a tietorch.Tie, got {type(tie).__name__}")
    existing = _tie_of(module, name)
    if existing is not None:
        raise ValueError(
            f"register_tie({where}): already tied with {existing.tie!r}; register "
            f"`old & new` after remove_tie(), so both constraints are solved together"
        )
    tensor = _tieable(module, name, f"register_tie({where})")
    try:
        layout = tie.layout(tuple(tensor.shape))
    except (ValueError, TypeError, IndexError) as error:
        raise type(error)(f"register_tie({where}): {error}") from error
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
    _check_init(init)
    tensor, layout = _prepare(module, name, tie)
    where = _label(module, name)
    param = TieParametrization(tie, layout.index, layout.sign, layout.n_free, tensor)
    with torch.no_grad():
        theta = param.right_inverse(tensor)
        error = relative_error(tensor, param(theta))
        if init == "preserve_std":
            theta = theta * layout.class_sizes.to(theta).clamp_min(1).sqrt()
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
        raise ValueError(f"remove_tie: {where} is not tied")
    if len(module.parametrizations[name]) > 1:
        raise ValueError(
            f"remove_tie: {where} has other parametrizations on top of its tie; remove those first"
        )
    followers = param.__dict__.get("_followers", ())
    if len(followers):
        raise ValueError(
            f"remove_tie: {where} holds the free vector of a group of tied tensors that "
            f"{len(followers)} other tensor(s) still read; remove_tie those first, or bake(model)"
        )
    owner = param.follows
    requires_grad = param.__dict__.get("_requires_grad", True)
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    if owner is not None:
        # Its placeholder was a buffer, so parametrize restored a buffer: give back what the
        # tensor was before it joined the group.
        if not param.__dict__.get("_was_buffer", False):
            value = module._buffers.pop(name)
            module.register_parameter(name, nn.Parameter(value.detach(), requires_grad))
        owner[0].__dict__["_followers"].discard(param)


def _tied_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str, TieParametrization]]:
    found = []
    for qualname, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
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
        if len(module.parametrizations[name]) > 1:
            raise ValueError(
                f"bake: {qualname or type(model).__name__}.{name} has other parametrizations on "
                "top of its tie; remove those first (nothing was untied)"
            )
    # Members of a group read their owner's free vector: untie them before the owner.
    tied.sort(key=lambda item: item[3].follows is None)
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
    targets = [
        (qualname, module)
        for qualname, module in model.named_modules()
        if isinstance(module, types)
        and isinstance(getattr(module, name, None), Tensor)
        and (where is None or where(qualname, module))
    ]
    for qualname, module in targets:
        try:
            _prepare(module, name, tie)
        except (ValueError, TypeError) as error:
            raise type(error)(f"tie_modules: module '{qualname}': {error}") from error
    _refuse_shared(model, [f"{q}.{name}" if q else name for q, _ in targets], "tie_modules")
    return {qualname: register_tie(module, name, tie, init=init) for qualname, module in targets}


def relative_error(original: Tensor, projected: Tensor) -> float:
    """``||W - P(W)|| / ||W||`` (0 for a zero tensor)."""
    norm = float(torch.linalg.vector_norm(original.detach()))
    diff = original.detach().to(projected) - projected
    return float(torch.linalg.vector_norm(diff)) / norm if norm else 0.0
