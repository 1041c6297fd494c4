"""Record real tf_keras ``LocallyConnected1D/2D`` layers for ``tests/test_keras.py``.

The only file of the project that needs TensorFlow. For every combination tf_keras accepts
(implementation 1/2/3 x channels_last/channels_first x valid/same, implementation 1 being
valid-only; strides 1 and 2; an odd and an even kernel; with and without bias; 1-d and 2-d) it
builds the layer in float64 with random weights (biases too), runs it on a random input and
writes what ``from_keras`` reads (``get_config()``, ``get_build_config()``, ``get_weights()``)
and what the test compares with (the input and the layer's output):

- ``locally_connected.json``: per case its name, config, build config and the keys of its arrays;
- ``locally_connected.npz``: the arrays (``<case>/input``, ``<case>/output``, ``<case>/weight<i>``).

Run (in an environment with tf_keras; tested with tensorflow-cpu 2.21, tf_keras 2.21)::

    pip install "tensorflow-cpu==2.21.*" "tf_keras==2.21.*"
    python tests/keras_fixtures/record.py

A combination tf_keras refuses is listed (with its error) in the JSON under ``refused``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

HERE = Path(__file__).resolve().parent
# Small spatial sizes (the dense implementation 2 kernel is H*W*Cin*Ho*Wo*F entries).
SIZES = {1: (7,), 2: (5, 6)}
KERNELS = {1: {"odd": (3,), "even": (2,)}, 2: {"odd": (3, 3), "even": (2, 3)}}
IN_CHANNELS, FILTERS, BATCH = 2, 3, 2


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def main() -> None:
    rng = np.random.default_rng(0)
    cases, refused, arrays = [], [], {}
    for n, implementation, data_format, padding, stride, kernel, use_bias in itertools.product(
        (1, 2),
        (1, 2, 3),
        ("channels_last", "channels_first"),
        ("valid", "same"),
        (1, 2),
        ("odd", "even"),
        (True, False),
    ):
        name = (
            f"{n}d_impl{implementation}_{data_format}_{padding}_stride{stride}_{kernel}"
            f"{'' if use_bias else '_nobias'}"
        )
        layer_class = keras.layers.LocallyConnected1D if n == 1 else keras.layers.LocallyConnected2D
        spatial = SIZES[n]
        shape = (
            (BATCH, *spatial, IN_CHANNELS)
            if data_format == "channels_last"
            else (BATCH, IN_CHANNELS, *spatial)
        )
        try:
            layer = layer_class(
                FILTERS,
                KERNELS[n][kernel],
                strides=stride,
                padding=padding,
                data_format=data_format,
                implementation=implementation,
                use_bias=use_bias,
                dtype="float64",
            )
            x = rng.standard_normal(shape)
            layer.build(shape)
            layer.set_weights([rng.standard_normal(w.shape) for w in layer.get_weights()])
            y = layer(tf.constant(x)).numpy()
        except (ValueError, NotImplementedError, tf.errors.OpError) as error:
            refused.append({"name": name, "error": str(error).splitlines()[0]})
            continue
        weights = layer.get_weights()
        arrays[f"{name}/input"] = x
        arrays[f"{name}/output"] = y
        for i, w in enumerate(weights):
            arrays[f"{name}/weight{i}"] = w
        cases.append(
            {
                "name": name,
                "class_name": type(layer).__name__,
                "config": _jsonable(layer.get_config()),
                "build_config": _jsonable(layer.get_build_config()),
                "weights": len(weights),
                "parameters": int(sum(w.size for w in weights)),
            }
        )
    versions = {"tensorflow": tf.__version__, "tf_keras": keras.__version__}
    record = {"versions": versions, "cases": cases, "refused": refused}
    (HERE / "locally_connected.json").write_text(json.dumps(record, indent=1) + "\n")
    np.savez_compressed(HERE / "locally_connected.npz", **arrays)
    print(f"{len(cases)} cases recorded, {len(refused)} refused by tf_keras")


if __name__ == "__main__":
    main()
