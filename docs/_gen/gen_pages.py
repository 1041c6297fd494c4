"""Generated at build time (mkdocs-gen-files): one API reference page per public module, and
``class-maps.md``, a picture of the classes of every built-in tie drawn by
:func:`tietorch.plot_layout` (one colour per class, darker where an entry reads minus its
parameter, grey for forced zeros). Nothing here is committed: the pictures come from the
library as built."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).resolve().parent))

from public_api import public_modules, public_names

import tietorch
import tietorch.ties

# ------------------------------------------------------------------------ API reference

for module in public_modules():
    name = module.__name__
    with mkdocs_gen_files.open(f"api/{name}.md", "w") as page:
        members = "".join(f"        - {member}\n" for member in public_names(module))
        page.write(
            f"# `{name}`\n\n::: {name}\n    options:\n      show_root_heading: false\n"
            f"      members:\n{members}"
            if members
            else f"# `{name}`\n\n::: {name}\n"
        )

# ---------------------------------------------------------------------------- class maps

# Each built-in tie on a small shape that shows its structure. A tie class added to
# tietorch.ties without an entry here is drawn from its no-argument form on the first small
# shape it accepts, or fails the build if it has none.
EXAMPLES: list[tuple[str, tuple[int, ...]]] = [
    ("SymmetricFlip()", (3, 3, 3, 3)),
    ("SymmetricFlip(sign=-1)", (3, 3, 3, 3)),
    ("Symmetric()", (6, 6)),
    ("Antisymmetric()", (6, 6)),
    ("ShareAlong(1)", (4, 6)),
    ("ShareAcrossGroups(3)", (6, 1, 3, 3)),
    ("Toeplitz()", (6, 6)),
    ("Circulant()", (6, 6)),
    ("Hankel()", (6, 6)),
    ("KernelSymmetry('D4')", (2, 2, 5, 5)),
    ("KernelSymmetry('C4')", (2, 2, 5, 5)),
    ("KernelSymmetry('C2')", (2, 2, 5, 5)),
    ("KernelSymmetry('flip_h')", (2, 2, 5, 5)),
    ("KernelSymmetry('flip_v')", (2, 2, 5, 5)),
    ("TileShare(2)", (4, 4, 3, 3)),
    (
        "ZeroWhere([[True, False, False, False], [False, True, False, False], "
        "[False, False, True, False], [False, False, False, True]])",
        (4, 4),
    ),
    ("Equivariant([[1, 0, 2, 3], [1, 2, 3, 0]], [[1, 0, 2, 3], [1, 2, 3, 0]])", (4, 4)),
    ("Invariant([[1, 2, 3, 0]], signs=[[-1, -1, -1, -1]])", (4,)),
    ("GroupConv('p4', 'regular', 'regular')", (4, 4, 3, 3)),
]


def _tie_classes() -> dict[str, type[tietorch.Tie]]:
    found = {}
    for name in public_names(tietorch.ties):
        obj = getattr(tietorch.ties, name)
        if isinstance(obj, type) and issubclass(obj, tietorch.Tie) and obj is not tietorch.Tie:
            found[name] = obj
    return found


def _examples() -> list[tuple[tietorch.Tie, tuple[int, ...]]]:
    from tietorch.cli import parse_tie  # the command line's safe parser of tie expressions

    examples = [(parse_tie(text), shape) for text, shape in EXAMPLES]
    covered = {type(tie).__name__ for tie, _ in examples}
    for name, cls in _tie_classes().items():
        if name in covered:
            continue
        try:
            tie = cls()
        except TypeError as error:
            raise RuntimeError(
                f"docs/_gen/gen_pages.py: add an example of tietorch.ties.{name} to EXAMPLES "
                f"(it needs arguments: {error})"
            ) from None
        from tietorch.testing.strategies import _shapes_by_rank

        shapes = [s for rank in _shapes_by_rank(tie, 5, 4).values() for s in rank]
        shapes = [s for s in shapes if len(s) >= 2 and math.prod(s) <= 100] or shapes
        examples.append((tie, max(shapes, key=math.prod)))
    return examples


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


lines = [
    "# Class maps of the built-in ties",
    "",
    "Each picture is `tietorch.plot_layout(tie, shape)`, drawn when this site was built: the",
    "entries of one class (one free parameter) share a colour, an entry that reads minus its",
    "parameter is darker, a forced zero is grey, and each entry shows the index of its",
    "parameter. A tensor of more than 2 dims is drawn as blocks of its last two dims (a conv",
    "weight `(out, in, kh, kw)` as a grid of kernels, output channels down). The same text",
    'map is `tietorch.render_layout(tie, shape)` or `tietorch show "TIE" --shape ...`.',
    "",
]
for tie, shape in _examples():
    layout = tie.layout(shape)
    file = f"class-maps/{_slug(repr(tie))}.png"
    figure = tietorch.plot_layout(tie, shape)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    with mkdocs_gen_files.open(file, "wb") as image:
        image.write(buffer.getvalue())
    shape_text = "x".join(map(str, shape))
    lines += [
        f"## `{tie!r}`",
        "",
        f"Shape {shape_text}: {layout.numel} entries, {layout.n_free} free parameters, "
        f"{layout.n_zero} forced zeros.",
        "",
        f"![class map of {tie!r} on shape {shape_text}]({file})",
        "",
    ]
with mkdocs_gen_files.open("class-maps.md", "w") as page:
    page.write("\n".join(lines))
