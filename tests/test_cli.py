"""The ``tietorch`` command: demo, show, check, bench, the safe tie parser, and errors.

Most tests call ``main([...])`` in-process (fast); two run the real command in a subprocess.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import tietorch
from tietorch.cli import CLIError, _bench, main, parse_shape, parse_tie

REPO = Path(__file__).resolve().parent.parent

USER_TIES = '''
import torch
from tietorch import Tie, TieLayout


class Flip(Tie):
    """The self-adjoint convolution tie (W[i,j,a,b] = W[j,i,-1-a,-1-b]), declared by a relation."""

    def relations(self, o, i, a, b):
        return (i, o, -1 - a, -1 - b)

    def check_shape(self, shape):
        if len(shape) != 4 or shape[0] != shape[1]:
            raise ValueError(f"Flip needs a (n, n, kh, kw) weight, got {shape}")


GOOD = Flip()


def make_good():
    return Flip()


class OverTies(Tie):
    """Declares Toeplitz, but its closed-form layout ties every entry together."""

    def key(self, i, j):
        return i - j

    def layout(self, shape):
        return TieLayout(torch.zeros(shape, dtype=torch.long), 1)

    def check_shape(self, shape):
        if len(shape) != 2:
            raise ValueError("OverTies: 2-d only")


WRONG = OverTies()
NOT_A_TIE = 3


class NeedsArgs(Tie):
    """Symmetric (sign 1) or antisymmetric (sign -1) n x n matrices: needs n."""

    def __init__(self, n, sign=1):
        self.n, self.sign_value = n, sign

    def relations(self, i, j):
        return (j, i)

    def sign(self, i, j):
        return torch.full(torch.broadcast_shapes(i.shape, j.shape), self.sign_value)

    def check_shape(self, shape):
        if tuple(shape) != (self.n, self.n):
            raise ValueError(f"NeedsArgs({self.n}) needs a {self.n}x{self.n} matrix")

    def __repr__(self):
        return f"NeedsArgs({self.n})"
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A user's module of ties, importable as ``cli_user_ties`` (from the current directory)."""
    name = "cli_user_ties"
    (tmp_path / f"{name}.py").write_text(USER_TIES)
    monkeypatch.chdir(tmp_path)  # the command imports MODULE:ATTR from the current directory
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def field(out: str, name: str) -> str:
    """The value printed after ``name`` on its line of ``tietorch show``'s output."""
    match = re.search(rf"^{name}\s+(.*)$", out, re.MULTILINE)
    assert match, f"no {name!r} line in:\n{out}"
    return match.group(1)


def number(text: str) -> int:
    return int(text.split()[0].replace(",", ""))


# ------------------------------------------------------------------------------ help, usage


def test_module_help_in_a_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tietorch", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for command in ("demo", "show", "check", "bench"):
        assert command in result.stdout
    assert "examples:" in result.stdout


@pytest.mark.parametrize("command", ["demo", "show", "check", "bench"])
def test_every_command_has_help_with_examples(capsys, command: str) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert "examples:" in out and f"tietorch {command}" in out


def test_no_command_prints_help_and_fails(capsys) -> None:
    code, _, err = run(capsys)
    assert code == 2 and "COMMAND" in err


def test_version(capsys) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and tietorch.__version__ in out


# ------------------------------------------------------------------------------------ show


@pytest.mark.parametrize(
    "expression, shape",
    [
        ("SymmetricFlip", (2, 2, 3, 3)),
        ("SymmetricFlip(sign=-1)", (3, 3, 3, 3)),
        ("KernelSymmetry('D4')", (2, 3, 5, 5)),
        ("Symmetric() & Toeplitz()", (6, 6)),
        ("Antisymmetric()", (4, 4)),
        ("ShareAcrossGroups(3)", (12, 1, 3, 3)),
        ("TileShare(2) & KernelSymmetry('D4')", (3, 3, 2, 2, 3, 3)),
    ],
)
def test_show_reports_the_library_counts(capsys, expression: str, shape: tuple) -> None:
    code, out, err = run(capsys, "show", expression, "--shape", ",".join(map(str, shape)))
    assert code == 0, err
    layout = parse_tie(expression).layout(shape)
    assert number(field(out, "entries")) == layout.numel
    assert number(field(out, "free parameters")) == layout.n_free
    assert number(field(out, "forced zeros")) == layout.n_zero
    sizes, counts = torch.unique(layout.class_sizes, return_counts=True)
    histogram = field(out, "class sizes")
    for size, count in zip(sizes.tolist(), counts.tolist()):
        assert re.search(rf"\b{count} (classes |class )?of size {size}\b", histogram), histogram


def test_show_self_adjoint_tie_histogram_and_grid(capsys) -> None:
    code, out, _ = run(capsys, "show", "SymmetricFlip", "--shape", "2,2,3,3")
    assert code == 0
    assert field(out, "class sizes") == "17 classes of size 2, 2 of size 1"
    index = tietorch.SymmetricFlip().layout((2, 2, 3, 3)).index
    grid = out.split("index map", 1)[1].splitlines()
    rows = [line for line in grid if re.fullmatch(r"(o=\d)?[\s\d]+", line) and line.strip()]
    numbers = [[int(v) for v in re.sub(r"o=\d", "", line).split()] for line in rows]
    # rows of the printed grid: for each o and kernel row a, W[o, i, a, :] for every i
    expected = [
        [v for i in range(2) for v in index[o, i, a].tolist()] for o in range(2) for a in range(3)
    ]
    assert numbers == expected


def test_show_marks_signs_and_forced_zeros(capsys) -> None:
    code, out, _ = run(capsys, "show", "Antisymmetric()", "--shape", "3,3")
    assert code == 0
    grid = out.split("index map", 1)[1].strip().splitlines()[-3:]
    layout = tietorch.Antisymmetric().layout((3, 3))
    for r, line in enumerate(grid):
        for c, cell in enumerate(line.split()):
            if r == c:
                assert cell in ("·", ".")
            else:
                k, s = int(layout.index[r, c]), int(layout.sign[r, c])
                assert cell == (f"-{k}" if s < 0 else str(k))
    assert number(field(out, "negated entries")) == 3


def test_show_large_shape_skips_the_grid(capsys) -> None:
    code, out, _ = run(capsys, "show", "Toeplitz()", "--shape", "64,64")
    assert code == 0 and "index map not printed" in out and "--png" in out


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os')",
        "__import__('os').system('echo hacked')",
        "os.system('echo hacked')",
        "SymmetricFlip().__class__",
        "(lambda: 1)()",
        "SymmetricFlip(sign=__import__('os'))",
        "SymmetricFlip(*[1])",
        "SymmetricFlip(**{'sign': 1})",
        "Symmetric() | Toeplitz()",
        "[c for c in ()]",
        "Tie.from_key(lambda i, j: i - j)",
        "Symmetric(",
        "",
    ],
)
def test_safe_parser_refuses_code(capsys, expression: str) -> None:
    with pytest.raises(CLIError):
        parse_tie(expression)
    code, out, err = run(capsys, "show", expression, "--shape", "3,3")
    assert code == 2 and out == "" and "error:" in err
    assert "hacked" not in out + err


def test_safe_parser_accepts_builtins() -> None:
    assert repr(parse_tie("SymmetricFlip")) == repr(tietorch.SymmetricFlip())
    assert repr(parse_tie("tietorch.SymmetricFlip(sign=-1)")) == repr(
        tietorch.SymmetricFlip(sign=-1)
    )
    both = parse_tie("(Symmetric() & Toeplitz()) & Hankel(dims=(0, 1))")
    assert (
        both.layout((4, 4)).n_free
        == (tietorch.Symmetric() & tietorch.Toeplitz() & tietorch.Hankel()).layout((4, 4)).n_free
    )


def test_unknown_tie_suggests_a_name(capsys) -> None:
    code, _, err = run(capsys, "show", "Symetric", "--shape", "3,3")
    assert code == 2 and "unknown tie 'Symetric'" in err and "did you mean Symmetric" in err


def test_bad_constructor_arguments(capsys) -> None:
    code, _, err = run(capsys, "show", "KernelSymmetry('D5')", "--shape", "3,3")
    assert code == 2 and "unknown group 'D5'" in err
    code, _, err = run(capsys, "show", "ShareAlong", "--shape", "3,3")
    assert code == 2 and "ShareAlong(dims)" in err


@pytest.mark.parametrize("shape", ["4,x", "4,,3", "0,3", "-1", "", "4.5"])
def test_bad_shape(capsys, shape: str) -> None:
    code, out, err = run(capsys, "show", "Symmetric()", "--shape", shape)
    assert code == 2 and out == "" and "bad shape" in err
    with pytest.raises(Exception, match="bad shape"):
        parse_shape(shape)


def test_shape_spellings() -> None:
    assert parse_shape("4,4,3,3") == parse_shape("4x4x3x3") == parse_shape("(4, 4, 3, 3)")
    assert parse_shape("5,") == (5,)


def test_refused_shape_shows_the_ties_message(capsys) -> None:
    tie = tietorch.SymmetricFlip()
    with pytest.raises(ValueError) as refused:
        tie.layout((4, 3, 3, 3))
    code, out, err = run(capsys, "show", "SymmetricFlip", "--shape", "4,3,3,3")
    assert code == 2 and out == ""
    assert str(refused.value) in err


def test_show_user_tie(capsys, user_module: str) -> None:
    for attr in ("GOOD", "Flip", "make_good"):
        code, out, err = run(capsys, "show", f"{user_module}:{attr}", "--shape", "3,3,3,3")
        assert code == 0, err
        assert number(field(out, "free parameters")) == 42  # nf(nf-1)/2*k*k + nf*ceil(k*k/2)


def test_show_user_tie_from_a_file(capsys, user_module: str, tmp_path: Path) -> None:
    code, out, err = run(capsys, "show", f"{tmp_path / user_module}.py:GOOD", "--shape", "2,2,3,3")
    assert code == 0, err
    assert number(field(out, "free parameters")) == 19


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module_xyz:tie", "cannot import 'no_such_module_xyz'"),
        ("{module}:NOPE", "has no attribute 'NOPE'"),
        ("{module}:NOT_A_TIE", "not a tietorch.Tie"),
        ("missing_file.py:GOOD", "cannot import 'missing_file.py'"),
    ],
)
def test_import_failures_are_usage_errors(capsys, user_module: str, spec: str, message: str):
    spec = spec.format(module=user_module)
    for argv in (["show", spec, "--shape", "3,3"], ["check", spec]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "", err
        assert message in err


def test_png(capsys, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "tie.png"
    code, out, err = run(capsys, "show", "SymmetricFlip", "--shape", "3,3,3,3", "--png", str(path))
    assert code == 0, err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(path) in out


def test_png_without_matplotlib(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    path = tmp_path / "tie.png"
    code, out, err = run(capsys, "show", "SymmetricFlip", "--shape", "3,3,3,3", "--png", str(path))
    assert code == 2 and not path.exists()  # a setup error, like the other usage errors
    assert 'pip install "tietorch[plot]"' in err
    assert number(field(out, "free parameters")) == 42  # the text layout is printed first


# ----------------------------------------------------------------------------------- check


def test_check_passes_a_correct_tie(capsys, user_module: str) -> None:
    code, out, err = run(capsys, "check", f"{user_module}:GOOD", "--max-examples", "10")
    assert code == 0, err
    assert out.startswith("OK") and out.count("\n") == 1
    assert "10 examples" in out
    assert "declared relations hold" in out and "minimal by dense rank on" in out
    # Flip only accepts (n, n, kh, kw): the line names 4-d shapes, not "1 to 4 dims"
    assert "of 4 dims" in out and "1 to 4 dims" not in out


def test_check_ok_line_names_the_solver_for_large_shapes(capsys, user_module: str) -> None:
    code, out, err = run(
        capsys, "check", f"{user_module}:GOOD", "--shape", "5,5,5,5", "--max-examples", "2"
    )
    assert code == 0, err
    assert "shape 5x5x5x5" in out and "not over-tied by tietorch's solver on 1 shape" in out
    assert "minimal by dense rank" not in out


def test_check_a_tie_that_needs_arguments(capsys, user_module: str) -> None:
    code, out, err = run(capsys, "check", f"{user_module}:NeedsArgs(2)", "--max-examples", "5")
    assert code == 0, err
    assert "NeedsArgs(2)" in out and "on shape 2x2;" in out  # the only shape it accepts
    code, out, err = run(capsys, "show", f"{user_module}:NeedsArgs(3, sign=-1)", "--shape", "3,3")
    assert code == 0, err
    assert number(field(out, "free parameters")) == 3  # antisymmetric 3x3


@pytest.mark.parametrize(
    "spec, message",
    [
        ("{module}:NeedsArgs(__import__('os'))", "arguments must be literals"),
        ("{module}:NeedsArgs(2).mro()", "only one call with literal arguments"),
        ("{module}:NeedsArgs(2)(3)", "only one call with literal arguments"),
        ("{module}:NeedsArgs(*[2])", "not allowed"),
        ("{module}:NeedsArgs(1, 2, 3)", "bad arguments for NeedsArgs"),
        ("{module}:GOOD(2)", "already a tie"),
        ("{module}:NeedsArgs(2", "cannot parse the arguments"),
    ],
)
def test_arguments_are_literals_only(capsys, user_module: str, spec: str, message: str) -> None:
    code, out, err = run(capsys, "check", spec.format(module=user_module))
    assert code == 2 and out == "", err
    assert message in err


def test_check_with_shapes_and_a_factory(capsys, user_module: str) -> None:
    code, out, err = run(
        capsys,
        "check",
        f"{user_module}:make_good",
        "--shape",
        "3,3,3,3",
        "--shape",
        "2,2,5,5",
        "--max-examples",
        "5",
    )
    assert code == 0, err
    assert "shapes 3x3x3x3, 2x2x5x5" in out  # smallest first


def test_check_fails_a_wrong_tie(capsys, user_module: str) -> None:
    code, out, _ = run(capsys, "check", f"{user_module}:WRONG", "--max-examples", "20")
    assert code == 1
    assert out.startswith("FAIL") and "over-ties" in out


def test_check_refused_shape_is_a_usage_error(capsys, user_module: str) -> None:
    code, out, err = run(capsys, "check", f"{user_module}:GOOD", "--shape", "4,3,3,3")
    assert code == 2 and out == ""
    assert "Flip needs a (n, n, kh, kw) weight" in err


def test_check_in_a_subprocess_with_pythonpath(tmp_path: Path) -> None:
    """The console script has no current directory on sys.path: PYTHONPATH works too."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "sub_user_ties.py").write_text(USER_TIES)
    env = {**os.environ, "PYTHONPATH": str(lib)}
    result = subprocess.run(
        [sys.executable, "-m", "tietorch", "check", "sub_user_ties:WRONG", "--max-examples", "5"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "FAIL" in result.stdout, result.stderr


# ----------------------------------------------------------------------------------- bench


def test_bench_without_the_benchmarks_directory(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(_bench, "benchmarks_dir", lambda: tmp_path / "benchmarks")
    code, _, err = run(capsys, "bench", "--quick")
    assert code == 2
    assert "no benchmarks" in err and "source checkout" in err


def test_bench_runs_the_benchmarks_module(capsys, monkeypatch) -> None:
    assert (_bench.benchmarks_dir() / "__main__.py").is_file()  # this is a source checkout
    calls = []

    def fake_run(command, **kwargs):
        calls.append((command, kwargs))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(_bench.subprocess, "run", fake_run)
    code, _, _ = run(capsys, "bench", "--quick")
    assert code == 0
    ((command, kwargs),) = calls
    assert command == [sys.executable, "-m", "benchmarks", "--quick"]
    assert Path(kwargs["cwd"]) == REPO


# ------------------------------------------------------------------------------------ demo


def test_demo_in_a_subprocess(tmp_path: Path) -> None:
    script = shutil.which("tietorch", path=str(Path(sys.executable).parent)) or shutil.which(
        "tietorch"
    )
    command = [script] if script else [sys.executable, "-m", "tietorch"]
    result = subprocess.run(
        [*command, "demo", "--seconds", "1", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"constraints hold exactly: (✓|yes)", out), out
    assert re.search(r"outputs identical: (✓|yes)", out), out
    assert "all checks passed" in out
    assert "test accuracy" in out and "dense" in out
    assert (tmp_path / "run" / "tietorch_demo.pt").is_file()
    for name in ("streams.weight", "mix.weight", "iso.weight", "local.weight"):
        assert name in out


def test_demo_fails_when_a_check_fails(capsys, monkeypatch) -> None:
    from tietorch import _demo

    checks = _demo.constraint_checks()
    broken = _demo.Check(
        "mix.weight",
        "SymmetricFlip()",
        "W == W.T (wrong on purpose)",
        lambda m: torch.equal(m.mix.weight, m.mix.weight.transpose(2, 3)),
    )
    monkeypatch.setattr(_demo, "constraint_checks", lambda: [*checks, broken])
    threads = torch.get_num_threads()
    code, out, _ = run(capsys, "demo", "--seconds", "0")
    assert code == 1
    assert "SOME CHECKS FAILED" in out
    assert torch.get_num_threads() == threads  # restored


def test_demo_rejects_negative_seconds(capsys) -> None:
    code, _, err = run(capsys, "demo", "--seconds", "-1")
    assert code == 2 and "seconds" in err


def test_memory_measurement_prints_no_profiler_noise() -> None:
    """The profiler's C++ side writes USDT lines and a CPUAllocator warning to fd 2."""
    code = (
        "import torch\n"
        "from benchmarks._common import peak_tensor_mib\n"
        "x = torch.randn(64, 64, requires_grad=True)\n"
        "held = [torch.randn(256, 256)]\n"
        "def step():\n"
        "    (x @ x).sum().backward()\n"
        "    held.clear()  # frees a block allocated before profiling: the allocator warns\n"
        "print(peak_tensor_mib(step) > 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert "USDT" not in result.stderr and "CPUAllocator" not in result.stderr, result.stderr
