"""tf_keras ``LocallyConnected2D`` (implementation 1) as a timed training step, for
``bench_locally_connected.py`` to run beside the torch variants in the same process.

Keras runs layers as graphs (``fit`` wraps the step in ``tf.function``); eager Keras is 20-30x
slower and is not what Keras users run, so the step here is ``tf.function``-compiled: forward,
then the kernel and bias gradients for a fixed output gradient (no input gradient, like the
torch cases). Implementation 1 is Keras' fastest on these shapes (2 and 3: 109-167 ms); it
accepts only ``padding="valid"``. The weights are the tietorch layer's own, so the outputs are
checked equal before timing. Nothing here imports TensorFlow unless ``available()``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["available", "keras_step"]


def available() -> bool:
    """Whether tf_keras (and TensorFlow) can be imported here."""
    return importlib.util.find_spec("tf_keras") is not None


def version() -> str:
    import tensorflow as tf
    import tf_keras

    return f"tf_keras {tf_keras.__version__}, TensorFlow {tf.__version__}"


def keras_step(
    layer: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, threads: int
) -> Callable[[], Any]:
    """The training step of a tf_keras ``LocallyConnected2D(implementation=1)`` holding
    ``layer``'s weights (a ``LocallyConnected2d``, stride as given, no padding), on ``x`` and
    output gradient ``g`` (NCHW torch tensors, given to Keras as NHWC)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf_keras

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    ho, wo, out, cin, kh, kw = layer.weight.shape
    keras_layer = tf_keras.layers.LocallyConnected2D(
        out, (kh, kw), strides=layer.stride, implementation=1, data_format="channels_last"
    )
    keras_layer.build((None, *x.shape[2:], cin))
    with torch.no_grad():
        # impl 1, channels_last: kernel (Ho*Wo, kh*kw*Cin, F), each patch flattened (kh, kw, C)
        kernel = layer.weight.permute(0, 1, 4, 5, 3, 2).reshape(ho * wo, kh * kw * cin, out)
        keras_layer.set_weights([kernel.numpy(), layer.bias.detach().numpy()])
        expected = layer(x).permute(0, 2, 3, 1).numpy()
    x_tf = tf.constant(x.detach().permute(0, 2, 3, 1).numpy())
    g_tf = tf.constant(g.permute(0, 2, 3, 1).numpy())
    got = keras_layer(x_tf).numpy()
    if not abs(got - expected).max() <= 1e-4 * max(1.0, float(abs(expected).max())):
        raise AssertionError("Keras and tietorch disagree on the same weights")

    @tf.function
    def step() -> Any:
        with tf.GradientTape() as tape:
            y = keras_layer(x_tf)
        return tape.gradient(y, keras_layer.trainable_variables, output_gradients=g_tf)

    def run() -> Any:
        grads = step()
        return grads[0].numpy()[0, 0, 0]  # the call has finished: its results are read

    return run
