"""A tie's layout on a shape, for people: :func:`render_layout` (text) and :func:`plot_layout`
(a matplotlib figure of the class map). ``tietorch show`` prints the one and saves the other.

Both take a tie and a shape, or a :class:`~tietorch.TieLayout` (whose shape is its own). A
tensor is drawn as blocks of its last two dims (a 1-d tensor is one row); the dims before them
are split in two, the first half (flattened) running down and the second half across. A conv
weight ``(out, in, kh, kw)`` is a grid of kernels, output channels down and input channels
across; a batch of matrices ``(b, m, n)`` is a row of matrices.

Example:
    >>> import tietorch
    >>> print(tietorch.render_layout(tietorch.Antisymmetric(), (3, 3)))  # doctest: +ELLIPSIS
    tie              Antisymmetric(dims=(0, 1))
    shape            3x3  (2 dims)
    entries          9
    free parameters  3  (3.0x fewer)
    forced zeros     3
    negated entries  3  (read -theta[k])
    class sizes      3 classes of size 2
    <BLANKLINE>
    index map: the free parameter k each entry reads (-k: minus it, ·: forced zero)
    <BLANKLINE>
     ·  0  1
    -0  ·  2
    -1 -2  ·
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._tie import Tie, TieLayout
from .errors import ShapeError, TieTypeError

if TYPE_CHECKING:  # matplotlib is optional (the ``plot`` extra)
    from matplotlib.figure import Figure

__all__ = ["plot_layout", "render_layout"]

GRID_MAX_ENTRIES = 1024  # the text index map is printed up to this many entries ...
GRID_MAX_WIDTH = 160  # ... and this many characters per line
PNG_LABEL_MAX_ENTRIES = 1024  # the figure writes each entry's parameter up to this many entries


def render_layout(
    tie_or_layout: Tie | TieLayout, shape: Sequence[int] | None = None, *, ascii: bool = False
) -> str:
    """The layout in words: counts, class sizes, and the index map when it is small.

    Args:
        tie_or_layout: a tie (then ``shape`` is required) or a layout (``shape`` optional).
        shape: the tensor's shape.
        ascii: mark forced zeros with ``.`` instead of ``·`` (for terminals that cannot print it).

    Returns:
        The text ``tietorch show`` prints. The index map (each entry's free parameter ``k``,
        ``-k`` when it reads minus it) is included for tensors of up to 4 dims and
        1024 entries that fit in 160 columns.

    Example:
        >>> import tietorch
        >>> text = tietorch.render_layout(tietorch.SymmetricFlip(), (2, 2, 3, 3))
        >>> print(text.splitlines()[3])
        free parameters  19  (1.9x fewer)
    """
    tie, layout = _tie_and_layout(tie_or_layout, shape, "render_layout")
    numel, free = layout.numel, layout.n_free
    ratio = f"{numel / free:.1f}x fewer" if free else "all forced to zero"
    rows = [("tie", repr(tie))] if tie is not None else []
    rows += [
        ("shape", f"{shape_text(layout.shape)}  ({len(layout.shape)} dims)"),
        ("entries", f"{numel:,}"),
        ("free parameters", f"{free:,}  ({ratio})"),
        ("forced zeros", f"{layout.n_zero:,}"),
    ]
    if layout.sign is not None:
        rows.append(("negated entries", f"{int((layout.sign < 0).sum()):,}  (read -theta[k])"))
    rows.append(("class sizes", class_histogram(layout)))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    zero = "." if ascii else "·"
    grid = index_grid(layout, zero)
    lines.append("")
    if grid is None:
        lines.append(
            f"(index map not printed: shown for up to 4 dims and {GRID_MAX_ENTRIES} entries; "
            "draw it with plot_layout, or tietorch show --png FILE)"
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


def plot_layout(tie_or_layout: Tie | TieLayout, shape: Sequence[int] | None = None) -> Figure:
    """The class map as a matplotlib figure: one colour per class, darker where an entry reads
    minus its parameter, grey for forced zeros, and each entry's parameter written on it (up to
    1024 entries). Needs matplotlib (``pip install "tietorch[plot]"``).

    Args:
        tie_or_layout: a tie (then ``shape`` is required) or a layout (``shape`` optional).
        shape: the tensor's shape.

    Returns:
        A ``matplotlib.figure.Figure`` (not attached to pyplot): save it with
        ``fig.savefig("map.png")``.

    Example:
        >>> import tietorch
        >>> fig = tietorch.plot_layout(tietorch.KernelSymmetry("D4"), (2, 2, 3, 3))
        >>> fig.axes[0].get_title().splitlines()[1]
        'shape 2x2x3x3: 36 entries, 12 free, 0 forced zero'
    """
    tie, layout = _tie_and_layout(tie_or_layout, shape, "plot_layout")
    try:
        import numpy as np
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            'plot_layout needs matplotlib, which is not installed: pip install "tietorch[plot]"'
        ) from error

    shape = layout.shape
    block_rows, block_cols, rows, cols = _arrangement(shape)
    height, width = block_rows * (rows + 1) - 1, block_cols * (cols + 1) - 1
    image = np.ones((max(height, 1), max(width, 1), 3))  # gaps between blocks stay white
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
    if len(shape) > 2 and 1 < block_cols <= 32:
        ax.set_xticks(
            [bc * (cols + 1) + (cols - 1) / 2 for bc in range(block_cols)],
            [str(bc) for bc in range(block_cols)],
            fontsize=7,
        )
        ax.set_xlabel(_dims_label(down, len(shape) - 2))
    if down and 1 < block_rows <= 32:
        ax.set_yticks(
            [br * (rows + 1) + (rows - 1) / 2 for br in range(block_rows)],
            [str(br) for br in range(block_rows)],
            fontsize=7,
        )
        ax.set_ylabel(_dims_label(0, down))
    for spine in ax.spines.values():
        spine.set_visible(False)
    name = repr(tie) if tie is not None else "a TieLayout"
    ax.set_title(
        f"{name}\nshape {shape_text(shape)}: {layout.numel:,} entries, "
        f"{layout.n_free:,} free, {layout.n_zero:,} forced zero\n"
        "one colour per class; darker: sign -1; grey: forced zero",
        fontsize=8,
    )
    return fig


# ------------------------------------------------------------------------------ helpers


def shape_text(shape: Sequence[int]) -> str:
    """``(4, 4, 3, 3)`` as ``"4x4x3x3"``."""
    return "x".join(map(str, shape))


def _tie_and_layout(
    tie_or_layout: Tie | TieLayout, shape: Sequence[int] | None, caller: str
) -> tuple[Tie | None, TieLayout]:
    if isinstance(tie_or_layout, TieLayout):
        layout = tie_or_layout
        if shape is not None and tuple(shape) != layout.shape:
            raise ShapeError(
                f"{caller}: the layout has shape {layout.shape}, but shape={tuple(shape)} was "
                "given (leave shape out for a layout)"
            )
        return None, layout
    if not isinstance(tie_or_layout, Tie):
        raise TieTypeError(
            f"{caller}: expected a tietorch.Tie or TieLayout, got {type(tie_or_layout).__name__}"
        )
    if shape is None:
        raise TieTypeError(f"{caller}: {tie_or_layout!r} needs a shape, e.g. (4, 4, 3, 3)")
    return tie_or_layout, tie_or_layout.layout(tuple(shape))


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
    """(block rows, block columns, rows per block, columns per block): see the module doc."""
    if len(shape) == 0:
        return 1, 1, 1, 1
    if len(shape) == 1:
        return 1, 1, 1, shape[0]
    lead = shape[:-2]
    down = len(lead) // 2
    return math.prod(lead[:down]), math.prod(lead[down:]), shape[-2], shape[-1]


def _dims_label(first: int, stop: int) -> str:
    if stop - first == 1:
        return f"dim {first}"
    return f"dims {first}-{stop - 1} (flattened)"


def index_grid(layout: TieLayout, zero: str = "·") -> str | None:
    """The index map as text, blocks of the last two dims arranged as in the module doc; None
    when the tensor is too large or has more than 4 dims.

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
    row_label, col_label = {4: ("o", "i"), 3: (None, "b")}.get(len(shape), (None, None))
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


def _class_colors(n: int) -> Any:
    """``n`` well-separated RGB colours (golden-ratio hues), as a numpy array ``(n, 3)``."""
    import numpy as np
    from matplotlib.colors import hsv_to_rgb

    k = np.arange(n)
    hsv = np.stack(
        [(k * 0.618033988749895) % 1.0, 0.45 + 0.4 * ((k * 0.3819) % 1.0), np.full(n, 0.92)], axis=1
    )
    return hsv_to_rgb(hsv) if n else np.zeros((0, 3))
