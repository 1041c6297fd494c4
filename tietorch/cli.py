"""The ``tietorch`` command (also ``python -m tietorch``): ``demo``, ``show``, ``check``, ``bench``.

``main(argv)`` returns the exit code: 0 on success, 1 when a check fails, 2 for usage errors
(unknown ties, bad shapes, shapes a tie refuses, imports that fail). Errors go to stderr.

A ``TIE`` argument is either ``module:attr`` (a user's tie, imported; the attribute may be a
``Tie`` instance, a ``Tie`` subclass or a zero-argument callable returning one; the module may
also be a path ``file.py``) or an expression over the built-in ties, which is parsed, not
evaluated: only calls of tietorch's tie classes with literal arguments, combined with ``&``.

Example:
    >>> parse_tie("Symmetric() & Toeplitz()")
    Symmetric(dims=(0, 1)) & Toeplitz(dims=(-2, -1))
    >>> parse_tie("KernelSymmetry('D4')").layout((3, 3)).n_free
    3
    >>> parse_shape("4,4,3,3")
    (4, 4, 3, 3)
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import importlib
import importlib.util
import inspect
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

import tietorch

from ._tie import Tie, TieLayout

__all__ = ["CLIError", "build_parser", "main", "parse_shape", "parse_tie", "resolve_tie"]

PROG = "tietorch"
MAX_EXPRESSION_CHARS = 1000
GRID_MAX_ENTRIES = 1024  # the text index map is printed up to this many entries ...
GRID_MAX_WIDTH = 160  # ... and this many characters per line
PNG_LABEL_MAX_ENTRIES = 1024  # the PNG writes each entry's parameter up to this many entries
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class CLIError(Exception):
    """An error reported as ``tietorch <command>: error: <message>`` with exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------- tie expressions


def builtin_ties() -> dict[str, type[Tie]]:
    """The tie classes a ``TIE`` expression may name: tietorch's exported built-in ties."""
    import tietorch.ties

    found: dict[str, type[Tie]] = {}
    for module in (tietorch.ties, tietorch):
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            if isinstance(obj, type) and issubclass(obj, Tie) and obj not in (Tie, tietorch.AllOf):
                found[name] = obj
    return found


def parse_tie(text: str) -> Tie:
    """Build a tie from an expression over the built-in ties, without evaluating any code.

    Allowed: a built-in tie class, called or not (``SymmetricFlip`` is ``SymmetricFlip()``),
    optionally as ``tietorch.X``, with literal arguments (numbers, strings, tuples, lists...),
    and ``a & b``. Anything else is refused with a :class:`CLIError`.

    >>> parse_tie("SymmetricFlip(sign=-1)")
    SymmetricFlip(dims=(0, 1), flip=(2, 3), sign=-1)
    >>> parse_tie("__import__('os')")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tietorch.cli.CLIError: unknown tie '__import__'; built-in ties: Antisymmetric, ...
    """
    text = text.strip()
    if not text:
        raise CLIError("empty tie expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CLIError(f"tie expression too long ({len(text)} > {MAX_EXPRESSION_CHARS} characters)")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        message = getattr(error, "msg", None) or str(error) or type(error).__name__
        raise CLIError(
            f"cannot parse the tie expression {text!r} ({message}); expected e.g. "
            '"KernelSymmetry(\'D4\')", "Symmetric() & Toeplitz()" or MODULE:ATTR'
        ) from None
    return _build_tie(tree.body, builtin_ties())


def _build_tie(node: ast.expr, known: dict[str, type[Tie]]) -> Tie:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd):
        left, right = _build_tie(node.left, known), _build_tie(node.right, known)
        return left & right
    if isinstance(node, (ast.Name, ast.Attribute)):
        return _instantiate(_tie_class(node, known), [], {})
    if isinstance(node, ast.Call):
        cls = _tie_class(node.func, known)
        args = []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise CLIError(f"not allowed in a tie expression: {ast.unparse(arg)!r}")
            args.append(_literal(arg, cls))
        kwargs = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise CLIError(f"not allowed in a tie expression: **{ast.unparse(keyword.value)}")
            kwargs[keyword.arg] = _literal(keyword.value, cls)
        return _instantiate(cls, args, kwargs)
    raise CLIError(
        f"not allowed in a tie expression: {ast.unparse(node)!r}; use built-in ties called "
        "with literal arguments, combined with &, or MODULE:ATTR for your own tie"
    )


def _tie_class(node: ast.expr, known: dict[str, type[Tie]]) -> type[Tie]:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        if node.value.id == "tietorch":  # tietorch.SymmetricFlip(...)
            node = ast.Name(id=node.attr)
    if not isinstance(node, ast.Name):
        raise CLIError(
            f"not allowed in a tie expression: {ast.unparse(node)!r}; name a built-in tie "
            f"({', '.join(sorted(known))}) or use MODULE:ATTR for your own"
        )
    if node.id not in known:
        close = difflib.get_close_matches(node.id, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise CLIError(
            f"unknown tie {node.id!r}; {hint}built-in ties: {', '.join(sorted(known))} "
            "(or MODULE:ATTR for your own)"
        )
    return known[node.id]


def _literal(node: ast.expr, cls: type[Tie]) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        raise CLIError(
            f"{cls.__name__}: arguments must be literals (numbers, strings, tuples, lists), "
            f"got {ast.unparse(node)!r}"
        ) from None


def _instantiate(cls: type[Tie], args: list[Any], kwargs: dict[str, Any]) -> Tie:
    try:
        return cls(*args, **kwargs)
    except TypeError as error:
        raise CLIError(f"bad arguments for {cls.__name__}{_signature(cls)}: {error}") from None
    except (ValueError, OverflowError) as error:
        raise CLIError(str(error)) from None


def _signature(obj: Any) -> str:
    """``(dims, flip=(2, 3))``: the call signature without annotations."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    parameters = [
        p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()
    ]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


def _is_import_spec(text: str) -> bool:
    module, sep, attr = text.strip().rpartition(":")
    if not sep or not _DOTTED.fullmatch(attr):
        return False
    return bool(_DOTTED.fullmatch(module)) or module.endswith(".py")


@contextlib.contextmanager
def _on_path(folder: str) -> Iterator[None]:
    """``folder`` first on ``sys.path`` while importing (as ``python -m`` does for the current
    directory, and ``python file.py`` for the file's directory), then removed again."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _import_file(path: Path) -> Any:
    """Import a ``.py`` file as a module (registered in ``sys.modules``, which e.g. dataclasses
    need), with its directory on ``sys.path`` so its own imports work."""
    if not path.is_file():
        raise FileNotFoundError(f"no file {str(path)!r}")
    name = path.stem if path.stem not in sys.modules else f"_tietorch_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _on_path(str(path.resolve().parent)):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_object(spec: str) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted; ``module`` may be a ``.py`` path)."""
    module_name, _, attr = spec.strip().rpartition(":")
    try:
        if module_name.endswith(".py"):
            module = _import_file(Path(module_name))
        else:
            with _on_path(os.getcwd()):
                module = importlib.import_module(module_name)
    except Exception as error:  # importing runs the user's code: any error is an import error
        raise CLIError(f"cannot import {module_name!r}: {type(error).__name__}: {error}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(f"{module_name!r} has no attribute {attr!r}") from None
    return obj


def as_tie(obj: Any, spec: str) -> Tie:
    """A tie from what ``spec`` named: a Tie, a Tie subclass, or a zero-arg callable."""
    if isinstance(obj, Tie):
        return obj
    if not callable(obj):
        raise CLIError(
            f"{spec} is a {type(obj).__name__}, not a tietorch.Tie (nor a Tie subclass or a "
            "zero-argument function returning one)"
        )
    name = getattr(obj, "__name__", spec)
    if isinstance(obj, type) and not issubclass(obj, Tie):
        raise CLIError(f"{spec} is the class {name}, which is not a tietorch.Tie subclass")
    try:
        value = obj()
    except TypeError as error:
        raise CLIError(
            f"{spec}: cannot call {name}{_signature(obj)} without arguments ({error}); point "
            "MODULE:ATTR at a tie instance or a zero-argument function returning one"
        ) from None
    except Exception as error:
        raise CLIError(f"{spec}: calling {name}() raised {type(error).__name__}: {error}") from None
    if not isinstance(value, Tie):
        raise CLIError(f"{spec}: {name}() returned a {type(value).__name__}, not a tietorch.Tie")
    return value


def resolve_tie(text: str) -> Tie:
    """A tie from a ``TIE`` argument: ``module:attr`` (imported) or a built-in expression."""
    if _is_import_spec(text):
        return as_tie(load_object(text), text.strip())
    return parse_tie(text)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"4,4,3,3"`` (or ``4x4x3x3``, ``(4, 4, 3, 3)``) as a tuple of positive ints."""
    parts = [p.strip() for p in re.split(r"[,x]", text.strip().strip("()[]"))]
    if parts and parts[-1] == "" and len(parts) > 1:  # "5," is the 1-d shape (5,)
        parts.pop()
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"bad shape {text!r}: expected positive integers separated by commas, e.g. 4,4,3,3"
        )
    return tuple(int(p) for p in parts)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


MAX_SHOW_ENTRIES = 10**8  # a layout of this size takes seconds and a few GB


def layout_of(tie: Tie, shape: tuple[int, ...]) -> TieLayout:
    """``tie.layout(shape)``; a refusal (ValueError and the like) becomes a usage error."""
    if math.prod(shape) > MAX_SHOW_ENTRIES:
        raise CLIError(
            f"shape {_shape_text(shape)} has {math.prod(shape):,} entries; the command line "
            f"handles at most {MAX_SHOW_ENTRIES:,} (call tie.layout in Python for more)"
        )
    try:
        return tie.layout(shape)
    except (ValueError, TypeError, IndexError, OverflowError) as error:
        raise CLIError(f"{tie!r} refuses shape {_shape_text(shape)}: {error}") from None
    except (RuntimeError, MemoryError) as error:
        raise CLIError(f"{tie!r} on shape {_shape_text(shape)} failed: {error}") from None


# ------------------------------------------------------------------------------------ show


def class_histogram(layout: TieLayout, limit: int = 8) -> str:
    """How many classes have each size, largest first: ``"17 classes of size 2, 2 of size 1"``.

    >>> from tietorch import SymmetricFlip
    >>> class_histogram(SymmetricFlip().layout((2, 2, 3, 3)))
    '17 classes of size 2, 2 of size 1'
    """
    if layout.n_free == 0:
        return "none (every entry is forced to zero)"
    sizes, counts = torch.unique(layout.class_sizes, return_counts=True)
    pairs = sorted(zip(sizes.tolist(), counts.tolist()), reverse=True)
    parts = []
    for k, (size, count) in enumerate(pairs[:limit]):
        noun = ("classes" if count != 1 else "class") if k == 0 else ""
        parts.append(f"{count:,} {noun} of size {size:,}".replace("  ", " "))
    if len(pairs) > limit:
        parts.append(f"... ({len(pairs) - limit} more sizes)")
    return ", ".join(parts)


def _cells(layout: TieLayout, zero: str) -> list[str]:
    """Each entry's text: its free parameter ``k``, ``-k`` when negated, ``zero`` if forced."""
    index = layout.index.reshape(-1).tolist()
    if layout.sign is None:
        return [str(k) for k in index]
    sign = layout.sign.reshape(-1).tolist()
    return [zero if s == 0 else (f"-{k}" if s < 0 else str(k)) for k, s in zip(index, sign)]


def _arrangement(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(block rows, block columns, rows per block, columns per block) for drawing a tensor.

    The last two dims form a block (a 1-d tensor is one row). The dims before them are split
    in two: the first half (flattened) runs down, the second half across. A conv weight
    ``(out, in, kh, kw)`` is a grid of kernels, output channels down and input channels across;
    a batch of matrices ``(b, m, n)`` is a row of matrices.
    """
    if len(shape) == 1:
        return 1, 1, 1, shape[0]
    lead = shape[:-2]
    down = len(lead) // 2
    return math.prod(lead[:down]), math.prod(lead[down:]), shape[-2], shape[-1]


def _dims_label(first: int, stop: int) -> str:
    if stop - first == 1:
        return f"dim {first}"
    return f"dims {first}-{stop - 1} (flattened)"


def _can_encode(text: str, stream: TextIO) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def index_grid(layout: TieLayout, zero: str = "·") -> str | None:
    """The index map as text, blocks of the last two dims arranged as in :func:`_arrangement`;
    None when the tensor is too large or has more than 4 dims.

    >>> from tietorch import Antisymmetric
    >>> print(index_grid(Antisymmetric().layout((3, 3))))
     ·  0  1
    -0  ·  2
    -1 -2  ·
    """
    shape = layout.shape
    if len(shape) > 4 or layout.numel > GRID_MAX_ENTRIES or layout.numel == 0:
        return None
    block_rows, block_cols, rows, cols = _arrangement(shape)
    cells = _cells(layout, zero)
    width = max(len(c) for c in cells)
    gap = "   " if block_cols > 1 else ""
    label_dims = {4: ("o", "i"), 3: (None, "b")}.get(len(shape), (None, None))
    row_label, col_label = label_dims
    margin = len(f"{row_label}={block_rows - 1}") + 2 if row_label else 0
    block_width = cols * (width + 1) - 1

    def cell(br: int, bc: int, r: int, c: int) -> str:
        flat = (((br * block_cols) + bc) * rows + r) * cols + c
        return cells[flat].rjust(width)

    lines = []
    if col_label:
        heads = [f"{col_label}={bc}".center(block_width) for bc in range(block_cols)]
        lines.append((" " * margin + gap.join(heads)).rstrip())
    for br in range(block_rows):
        for r in range(rows):
            label = f"{row_label}={br}" if row_label and r == 0 else ""
            blocks = [" ".join(cell(br, bc, r, c) for c in range(cols)) for bc in range(block_cols)]
            lines.append(label.ljust(margin) + gap.join(blocks))
        if br < block_rows - 1 and rows > 1:
            lines.append("")
    if max(len(line) for line in lines) > GRID_MAX_WIDTH:
        return None
    return "\n".join(line.rstrip() for line in lines)


def describe(tie: Tie, layout: TieLayout, stream: TextIO) -> str:
    """The text ``tietorch show`` prints: counts, class sizes, and the index map if small."""
    numel, free = layout.numel, layout.n_free
    ratio = f"{numel / free:.1f}x fewer" if free else "all forced to zero"
    rows = [
        ("tie", repr(tie)),
        ("shape", f"{_shape_text(layout.shape)}  ({len(layout.shape)} dims)"),
        ("entries", f"{numel:,}"),
        ("free parameters", f"{free:,}  ({ratio})"),
        ("forced zeros", f"{layout.n_zero:,}"),
    ]
    if layout.sign is not None:
        rows.append(("negated entries", f"{int((layout.sign < 0).sum()):,}  (read -theta[k])"))
    rows.append(("class sizes", class_histogram(layout)))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    zero = "·" if _can_encode("·", stream) else "."
    grid = index_grid(layout, zero)
    lines.append("")
    if grid is None:
        lines.append(
            f"(index map not printed: shown for up to 4 dims and {GRID_MAX_ENTRIES} entries; "
            "use --png FILE to draw it)"
        )
    else:
        lines.append(
            f"index map: the free parameter k each entry reads (-k: minus it, {zero}: forced zero)"
        )
        what = {
            4: "kernels W[o, i, :, :], output channel o down, input channel i across",
            3: "matrices W[b, :, :] side by side",
        }.get(len(layout.shape))
        if what:
            lines.append(what)
        lines.append("")
        lines.append(grid)
    return "\n".join(lines)


def _class_colors(n: int) -> Any:
    """``n`` well-separated RGB colours (golden-ratio hues), as a numpy array ``(n, 3)``."""
    import numpy as np
    from matplotlib.colors import hsv_to_rgb

    k = np.arange(n)
    hsv = np.stack(
        [(k * 0.618033988749895) % 1.0, 0.45 + 0.4 * ((k * 0.3819) % 1.0), np.full(n, 0.92)], axis=1
    )
    return hsv_to_rgb(hsv) if n else np.zeros((0, 3))


def draw_png(tie: Tie, layout: TieLayout, path: Path) -> None:
    """Draw the class map with matplotlib: one colour per class (darker: sign -1), forced
    zeros grey, blocks of the last two dims arranged as in :func:`_arrangement`."""
    import numpy as np
    from matplotlib.figure import Figure

    shape = layout.shape
    block_rows, block_cols, rows, cols = _arrangement(shape)
    height, width = block_rows * (rows + 1) - 1, block_cols * (cols + 1) - 1
    image = np.ones((height, width, 3))  # gaps between blocks stay white
    index = layout.index.reshape(block_rows, block_cols, rows, cols).numpy()
    sign = (
        np.ones(index.shape, dtype=np.int8)
        if layout.sign is None
        else layout.sign.reshape(index.shape).numpy()
    )
    colors = _class_colors(layout.n_free)
    rgb = colors[index] if layout.n_free else np.zeros((*index.shape, 3))
    rgb = np.where((sign < 0)[..., None], rgb * 0.6, rgb)
    rgb = np.where((sign == 0)[..., None], 0.78, rgb)
    cells = _cells(layout, "0") if layout.numel <= PNG_LABEL_MAX_ENTRIES else None
    inch = 0.32 if cells else 0.08
    fig = Figure(
        figsize=(min(max(width * inch + 1.5, 3.0), 30.0), min(max(height * inch + 1.2, 2.0), 30.0))
    )
    ax = fig.add_subplot()
    for br in range(block_rows):
        for bc in range(block_cols):
            top, left = br * (rows + 1), bc * (cols + 1)
            image[top : top + rows, left : left + cols] = rgb[br, bc]
            if cells is None:
                continue
            for r in range(rows):
                for c in range(cols):
                    flat = ((br * block_cols + bc) * rows + r) * cols + c
                    ax.text(
                        left + c,
                        top + r,
                        cells[flat],
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if sign[br, bc, r, c] >= 0 else "white",
                    )
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    down = (len(shape) - 2) // 2 if len(shape) > 2 else 0
    if len(shape) > 2 and block_cols > 1 and block_cols <= 32:
        ax.set_xticks(
            [bc * (cols + 1) + (cols - 1) / 2 for bc in range(block_cols)],
            [str(bc) for bc in range(block_cols)],
            fontsize=7,
        )
        ax.set_xlabel(_dims_label(down, len(shape) - 2))
    if down and block_rows > 1 and block_rows <= 32:
        ax.set_yticks(
            [br * (rows + 1) + (rows - 1) / 2 for br in range(block_rows)],
            [str(br) for br in range(block_rows)],
            fontsize=7,
        )
        ax.set_ylabel(_dims_label(0, down))
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(
        f"{tie!r}\nshape {_shape_text(shape)}: {layout.numel:,} entries, "
        f"{layout.n_free:,} free, {layout.n_zero:,} forced zero\n"
        "one colour per class; darker: sign -1; grey: forced zero",
        fontsize=8,
    )
    fig.savefig(path, dpi=120, bbox_inches="tight")


# -------------------------------------------------------------------------------- commands


def cmd_demo(args: argparse.Namespace) -> int:
    """``tietorch demo``: see :mod:`tietorch._demo`."""
    from ._demo import run_demo

    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out {args.out}: not a directory")
    try:
        return run_demo(seconds=args.seconds, seed=args.seed, out=args.out, threads=args.threads)
    except OSError as error:  # --out not writable, disk full...
        raise CLIError(f"cannot save the checkpoint: {error}", code=1) from None
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def cmd_show(args: argparse.Namespace) -> int:
    """``tietorch show``: the layout of a tie on a shape, in words (and optionally a PNG)."""
    if args.png is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CLIError(
                '--png needs matplotlib, which is not installed: pip install "tietorch[plot]"',
                code=1,
            ) from None
        if not args.png.parent.is_dir():
            raise CLIError(f"--png {args.png}: no directory {str(args.png.parent)!r}")
    tie = resolve_tie(args.tie)
    layout = layout_of(tie, args.shape)
    print(describe(tie, layout, sys.stdout))
    if args.png is not None:
        try:
            draw_png(tie, layout, args.png)
        except (OSError, ValueError) as error:  # unwritable file, unknown image format...
            raise CLIError(f"cannot write {args.png}: {error}", code=1) from None
        print(f"\nwrote {args.png}")
    return 0


def _what_check_tie_checks(tie: Tie, shapes: list[tuple[int, ...]] | None) -> str:
    from .testing import RANK_CHECK_MAX_NUMEL

    declares = tie._declares()
    if declares == "layout":
        return (
            "well-formed layout, projection, gradients (it overrides only layout(): "
            "no key or relations to check it against)"
        )
    declared = {
        "key": "declared key holds",
        "relations": "declared relations hold",
        "all of": "declarations of all parts hold",
    }[declares]
    if shapes is not None and all(math.prod(s) > RANK_CHECK_MAX_NUMEL for s in shapes):
        rank = (
            f"not over-tied (checked against tietorch's solver: shapes > "
            f"{RANK_CHECK_MAX_NUMEL} entries are too large for the dense rank)"
        )
    else:
        rank = "minimal by dense rank"
    return f"well-formed layout, {declared}, {rank}, projection, gradients"


def cmd_check(args: argparse.Namespace) -> int:
    """``tietorch check``: ``tietorch.testing.check_tie`` on a user's tie."""
    try:
        from .testing import check_tie
        from .testing.strategies import shapes_for
    except ImportError as error:
        raise CLIError(str(error)) from None
    tie = resolve_tie(args.tie)
    shapes: list[tuple[int, ...]] | None = args.shape
    if shapes:
        for shape in shapes:
            if math.prod(shape) > MAX_SHOW_ENTRIES:
                raise CLIError(
                    f"shape {_shape_text(shape)} has {math.prod(shape):,} entries; the command "
                    f"line handles at most {MAX_SHOW_ENTRIES:,}"
                )
            try:
                tie.check_shape(shape)
            except Exception as error:
                raise CLIError(f"{tie!r} refuses shape {_shape_text(shape)}: {error}") from None
        where = "shapes " + ", ".join(_shape_text(s) for s in dict.fromkeys(shapes))
    else:
        try:
            shapes_for(tie)
        except (ValueError, TypeError) as error:
            raise CLIError(f"{error}; pass --shape") from None
        where = "small shapes it accepts (1 to 4 dims of sizes 1 to 5)"
    start = time.perf_counter()
    try:
        check_tie(tie, shapes=shapes or None, max_examples=args.max_examples)
    except AssertionError as error:
        notes = "".join(f"\n{note}" for note in getattr(error, "__notes__", ()))
        print(f"FAIL {args.tie}: {tie!r}\n{error}{notes}")
        return 1
    except Exception as error:  # the tie's own code raised while being checked
        notes = "".join(f"\n{note}" for note in getattr(error, "__notes__", ()))
        print(f"FAIL {args.tie}: {tie!r} raised {type(error).__name__}: {error}{notes}")
        return 1
    elapsed = time.perf_counter() - start
    print(
        f"OK {args.tie}: {tie!r} passed check_tie ({args.max_examples} examples on {where}; "
        f"{_what_check_tie_checks(tie, shapes)}) in {elapsed:.1f} s"
    )
    return 0


def benchmarks_dir() -> Path:
    """Where a source checkout keeps the benchmarks: ``benchmarks/`` next to the package."""
    return Path(tietorch.__file__).resolve().parent.parent / "benchmarks"


def cmd_bench(args: argparse.Namespace) -> int:
    """``tietorch bench``: run ``python -m benchmarks`` from the source checkout, streaming."""
    folder = benchmarks_dir()
    if not (folder / "__main__.py").is_file():
        raise CLIError(
            f"no benchmarks at {folder}: they ship with the source checkout, not with the "
            "installed package. Clone the repository, `pip install -e .` it, and run "
            "`tietorch bench` (or `python -m benchmarks`) there"
        )
    command = [sys.executable, "-m", "benchmarks", *(["--quick"] if args.quick else [])]
    print(f"running `python {' '.join(command[1:])}` in {folder.parent}", flush=True)
    sys.stderr.flush()
    try:
        return subprocess.run(command, cwd=folder.parent, check=False).returncode
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------------------------- parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in the epilog as written."""


_TIE_HELP = (
    "a built-in tie expression (e.g. SymmetricFlip, \"KernelSymmetry('D4')\", "
    '"Symmetric() & Toeplitz()") or MODULE:ATTR naming your own tie'
)

_EPILOGS = {
    "main": """\
examples:
  tietorch demo
  tietorch show SymmetricFlip --shape 4,4,3,3
  tietorch check my_ties:MyTie --shape 4,4,3,3
  tietorch <command> --help
""",
    "demo": """\
examples:
  tietorch demo                      # about 5 s of training, then the checks
  tietorch demo --seconds 20 --seed 1
  tietorch demo --out runs/demo      # keep the checkpoint (runs/demo/tietorch_demo.pt)

exit code 0 when every constraint holds exactly and the reloaded model gives identical
outputs, 1 otherwise.
""",
    "show": """\
TIE is an expression over the built-in ties (parsed, not evaluated: tie classes called with
literal arguments, combined with &), or MODULE:ATTR for your own tie (a Tie instance, a Tie
subclass or a zero-argument function returning one; MODULE may be a file.py).

examples:
  tietorch show SymmetricFlip --shape 2,2,3,3
  tietorch show "SymmetricFlip(sign=-1)" --shape 3,3,3,3
  tietorch show "KernelSymmetry('D4')" --shape 5,5
  tietorch show "Symmetric() & Toeplitz()" --shape 6,6
  tietorch show my_ties:MyTie --shape 4,4,3,3 --png my_tie.png   # needs tietorch[plot]
""",
    "check": """\
Runs tietorch.testing.check_tie (needs Hypothesis: pip install "tietorch[testing]"): the
layout is well formed, satisfies the tie's declared key/relations, is minimal (dense rank),
projects orthogonally and passes gradients. Exit code 0 if it passes, 1 if not, 2 for usage
errors.

examples:
  tietorch check my_ties:MyTie                        # shapes derived from check_shape
  tietorch check my_ties:make_tie --shape 4,4,3,3 --shape 2,2,5,5
  tietorch check path/to/ties.py:MY_TIE --max-examples 500
""",
    "bench": """\
Runs `python -m benchmarks` in the source checkout the package is installed from (the
benchmarks/ folder next to tietorch/); an install from a wheel has none.

examples:
  tietorch bench --quick
  tietorch bench
""",
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tietorch`` command and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="tietorch: declare which entries of a PyTorch weight are equal; train only "
        "the free parameters.",
        epilog=_EPILOGS["main"],
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"tietorch {tietorch.__version__} (torch {torch.__version__})",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_EPILOGS[name],
            formatter_class=_Formatter,
        )

    demo = command(
        "demo", "Tie a small CNN, train it for a few seconds, check the ties, save and reload."
    )
    demo.add_argument(
        "--seconds", type=_seconds, default=5.0, help="training time in seconds (default: 5)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of data, model and batches")
    demo.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the checkpoint in DIR (default: a temporary directory)",
    )
    demo.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch threads (default: 1, fastest for this tiny model)",
    )
    demo.set_defaults(func=cmd_demo)

    show = command(
        "show",
        "Show a tie's layout on a shape: entries, free parameters, forced zeros, class "
        "sizes and the index map.",
    )
    show.add_argument("tie", metavar="TIE", help=_TIE_HELP)
    show.add_argument(
        "--shape", type=parse_shape, required=True, help="the tensor's shape, e.g. 4,4,3,3"
    )
    show.add_argument(
        "--png",
        type=Path,
        default=None,
        metavar="FILE",
        help="also draw the class map to FILE (needs matplotlib)",
    )
    show.set_defaults(func=cmd_show)

    check = command("check", "Property-test a tie with tietorch.testing.check_tie.")
    check.add_argument(
        "tie",
        metavar="MODULE:ATTR",
        help="your tie (a Tie, a Tie subclass or a zero-argument function "
        "returning one); built-in expressions work too",
    )
    check.add_argument(
        "--shape",
        type=parse_shape,
        action="append",
        default=None,
        help="a shape to check on (repeatable; default: small shapes the tie accepts)",
    )
    check.add_argument(
        "--max-examples",
        type=_positive_int,
        default=100,
        metavar="N",
        help="Hypothesis examples to try (default: 100)",
    )
    check.set_defaults(func=cmd_check)

    bench = command("bench", "Run the benchmarks (from a source checkout).")
    bench.add_argument("--quick", action="store_true", help="a short run")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tietorch`` command with ``argv`` (default ``sys.argv[1:]``); the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exit_:  # --help, --version, usage errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except CLIError as error:
        sys.stdout.flush()
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return error.code
    except BrokenPipeError:  # e.g. `tietorch show ... | head`: stop quietly
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # keeps the final flush from failing again
        return 1
