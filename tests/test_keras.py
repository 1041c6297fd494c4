"""``LocallyConnected1d/2d.from_keras`` against recorded outputs of real tf_keras layers.

``tests/keras_fixtures/record.py`` (the only file needing TensorFlow) recorded every
combination tf_keras 2.21 accepts: implementation x data format x valid/same x stride x odd and
even kernels x bias, 1-d and 2-d, in float64. ``RecordedLayer`` serves a recording's config,
build config and weights: what ``from_keras`` reads of a real layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tietorch as tt
from tietorch.layers import LocallyConnected1d, LocallyConnected2d

FIXTURES = Path(__file__).resolve().parent / "keras_fixtures"
RECORD = json.loads((FIXTURES / "locally_connected.json").read_text())
ARRAYS = np.load(FIXTURES / "locally_connected.npz")
CASES = {case["name"]: case for case in RECORD["cases"]}


class RecordedLayer:
    """A recording of a tf_keras layer: its config, build config and weights, served by the
    methods of the real layer (a recording of the layer, not a model of its behaviour)."""

    def __init__(self, case: dict[str, Any], built: bool = True) -> None:
        self.case = case
        self.built = built

    def get_config(self) -> dict[str, Any]:
        return dict(self.case["config"])

    def get_build_config(self) -> dict[str, Any] | None:
        return dict(self.case["build_config"]) if self.built else None

    def get_weights(self) -> list[np.ndarray]:
        name = self.case["name"]
        return [ARRAYS[f"{name}/weight{i}"] for i in range(self.case["weights"])]


def _to_torch_layout(array: np.ndarray, channels_last: bool) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor.movedim(-1, 1) if channels_last else tensor


def test_the_recording_covers_every_combination_tf_keras_accepts():
    assert RECORD["versions"]["tf_keras"].startswith("2.")
    assert len(CASES) == 160 and len(RECORD["refused"]) == 32  # 2 x 96 combinations tried
    assert all('only "valid" is supported' in r["error"] for r in RECORD["refused"])
    combos = {
        (c["config"]["implementation"], c["config"]["data_format"], c["config"]["padding"])
        for c in CASES.values()
    }
    assert len(combos) == 10  # impl 1 valid-only: 2 formats; impl 2 and 3: 2 x 2


@pytest.mark.parametrize("name", sorted(CASES))
def test_from_keras_matches_the_recorded_output(name):
    case = CASES[name]
    config = case["config"]
    layer_class = LocallyConnected1d if name.startswith("1d") else LocallyConnected2d
    lc = layer_class.from_keras(RecordedLayer(case))
    last = config["data_format"] == "channels_last"
    x = _to_torch_layout(ARRAYS[f"{name}/input"], last)
    expected = _to_torch_layout(ARRAYS[f"{name}/output"], last)
    assert lc.weight.dtype == torch.float64
    with torch.no_grad():
        y = lc(x)
    assert y.shape == expected.shape
    assert (y - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_an_unbuilt_layer_needs_the_input_size_except_implementation_2():
    case = CASES["2d_impl3_channels_last_same_stride2_even"]
    with pytest.raises(tt.errors.ArgumentError, match="input_size="):
        LocallyConnected2d.from_keras(RecordedLayer(case, built=False))
    impl1 = CASES["2d_impl1_channels_first_valid_stride1_odd"]
    lc = LocallyConnected2d.from_keras(RecordedLayer(impl1, built=False), input_size=(5, 6))
    assert lc.in_channels == 2 and lc.output_size == (3, 4)
    impl2 = CASES["1d_impl2_channels_first_same_stride2_odd"]
    assert LocallyConnected1d.from_keras(RecordedLayer(impl2, built=False)).input_size == (7,)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"activation": "relu"}, "activation='relu'"),
        ({"kernel_constraint": {"class_name": "NonNeg"}}, "kernel_constraint"),
        ({"kernel_size": [3]}, "LocallyConnected1d.from_keras"),
    ],
)
def test_what_cannot_be_mapped_is_refused(change, match):
    case = dict(CASES["2d_impl1_channels_last_valid_stride1_odd"])
    case["config"] = {**case["config"], **change}
    with pytest.raises(tt.errors.ArgumentError, match=match):
        LocallyConnected2d.from_keras(RecordedLayer(case))


def test_not_a_keras_layer_is_a_type_error():
    with pytest.raises(tt.errors.TieTypeError, match="get_config"):
        LocallyConnected2d.from_keras(torch.nn.Conv2d(2, 3, 3))


# ------------------------------------------------ weights that face only padding


@pytest.mark.parametrize(
    "name", sorted(n for n, c in CASES.items() if c["config"]["implementation"] == 3)
)
def test_without_the_padding_weights_the_count_is_implementation_3s(name):
    case = CASES[name]
    layer_class = LocallyConnected1d if name.startswith("1d") else LocallyConnected2d
    lc = layer_class.from_keras(RecordedLayer(case))
    assert sum(p.numel() for p in lc.parameters()) == case["parameters"]
    kept = layer_class.from_keras(RecordedLayer(case), zero_padding_weights=False)
    kept_count = sum(p.numel() for p in kept.parameters())
    padded = case["config"]["padding"] == "same"
    assert (kept_count > case["parameters"]) == padded  # every weight kept, Keras' padded ones too
    x = torch.randn(2, 2, *lc.input_size, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(lc(x), kept(x), rtol=0, atol=1e-12)


def _padding_reads(lc) -> torch.Tensor:
    """Independently of the layer: which weight entries read padding, by running the layer's
    own unfold on an input of ones padded with zeros (a padded entry multiplies a zero)."""
    ones = torch.ones(1, lc.in_channels, *lc.input_size, dtype=torch.float64)
    pads = [p for pair in reversed(lc._pads) for p in pair]
    padded = torch.nn.functional.pad(ones, pads)
    windows = padded
    for d, (k, s, dil) in enumerate(zip(lc.kernel_size, lc.stride, lc.dilation)):
        windows = windows.unfold(2 + d, dil * (k - 1) + 1, s)[..., ::dil]
    # windows: (1, C, *out, *k) -> (*out, 1, C, *k), then broadcast over out_channels
    n = len(lc.kernel_size)
    perm = [*range(2, 2 + n), 0, 1, *range(2 + n, 2 + 2 * n)]
    return (windows.permute(perm) == 0).expand(lc.weight.shape)


@pytest.mark.parametrize(
    ("layer_class", "kwargs"),
    [
        (LocallyConnected2d, {"kernel_size": 3, "input_size": 5, "padding": 1}),
        (LocallyConnected2d, {"kernel_size": (2, 3), "input_size": (6, 5), "padding": "same"}),
        (LocallyConnected2d, {"kernel_size": 3, "input_size": 7, "padding": 2, "stride": 2}),
        (LocallyConnected2d, {"kernel_size": 3, "input_size": 7, "padding": 2, "dilation": 2}),
        (LocallyConnected1d, {"kernel_size": 4, "input_size": 9, "padding": (1, 3)}),
    ],
)
def test_weights_facing_only_padding_are_forced_zero_and_stay_so(layer_class, kwargs):
    torch.manual_seed(0)
    lc = layer_class(2, 3, zero_padding_weights=True, dtype=torch.float64, **kwargs)
    plain = layer_class(2, 3, dtype=torch.float64, **kwargs)
    facing = _padding_reads(plain)
    assert facing.any()
    assert torch.equal(lc.weight == 0, facing)
    free = sum(p.numel() for p in lc.parameters())
    assert free == sum(p.numel() for p in plain.parameters()) - int(facing.sum())
    opt = torch.optim.SGD(lc.parameters(), lr=0.1)
    lc(torch.randn(2, 2, *lc.input_size, dtype=torch.float64)).square().sum().backward()
    opt.step()
    assert torch.equal(lc.weight == 0, facing)  # still zero after a step
    state = lc.state_dict()
    again = layer_class(2, 3, zero_padding_weights=True, dtype=torch.float64, **kwargs)
    again.load_state_dict(state)
    assert torch.equal(again.weight, lc.weight)


def test_zero_padding_weights_compose_with_a_tie_that_keeps_them_apart_and_refuse_one_that_mixes():
    shared = LocallyConnected2d(
        4, 3, 3, input_size=5, padding=1, zero_padding_weights=True, tie=tt.ShareAlong(3)
    )
    assert shared.weight.shape == (5, 5, 3, 4, 3, 3)
    assert torch.equal(shared.weight, shared.weight[:, :, :, :1].expand_as(shared.weight))
    for tie in (tt.TileShare(2), tt.KernelSymmetry("D4")):
        with pytest.raises(tt.errors.ArgumentError, match="cannot be combined"):
            LocallyConnected2d(2, 3, 3, input_size=6, padding=1, zero_padding_weights=True, tie=tie)
    tile = tt.TileShare(2)
    valid = LocallyConnected2d(2, 3, 3, input_size=6, zero_padding_weights=True, tie=tile)
    assert valid.tie is tile  # no padding: nothing to force


def test_zero_where_in_closed_form_equals_the_solved_layout():
    torch.manual_seed(0)
    mask = torch.rand(3, 4, 5) > 0.6
    tie = tt.ZeroWhere(mask)
    described, solved = tie.layout(mask.shape), tt.Tie.layout(tie, tuple(mask.shape))
    assert torch.equal(described.index, solved.index) and described.n_free == solved.n_free
    assert torch.equal(described.sign, solved.sign) and described.n_zero == int(mask.sum())
    with pytest.raises(tt.errors.ShapeError, match="mask's shape"):
        tie.layout((3, 4))
