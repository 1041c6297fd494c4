"""Keras' locally connected layers read into tietorch's: ``LocallyConnected1d/2d.from_keras``.

Nothing here imports TensorFlow: a tf_keras ``LocallyConnected1D/2D`` is read through its
public ``get_config()``, ``get_build_config()`` and ``get_weights()`` (numpy arrays), which a
recording of a layer serves as well as the layer itself. Parse (the config into the layer's
arguments, Keras' own ``same`` rule) -> one dense weight in tietorch's layout -> a layer that
holds it.

Keras' kernel layouts, one per implementation (from the tf_keras source,
https://github.com/keras-team/tf-keras/tree/master/tf_keras/layers/locally_connected, and
checked against recorded outputs of real layers in ``tests/test_keras.py``); ``out`` are the
output locations, ``in`` the input ones, ``k`` the kernel offsets, C the input channels and F
the filters:

- implementation 1: ``(prod(out), prod(k) * C, F)``, each location's patch flattened as
  ``(*k, C)`` (channels_last) or ``(C, *k)`` (channels_first);
- implementation 2: a dense masked ``(*in, C, *out, F)`` (channels_first ``(C, *in, F, *out)``);
  the entries outside a location's window are masked out by Keras and ignored here;
- implementation 3: the non-zeros of a ``(prod(out) * F, prod(in) * C)`` matrix, in the
  sorted order of their ``(output index, input index)`` pairs, each index flattened in the
  data format's order.

The bias is ``(*out, F)``; for channels_first, Keras' ``bias_add`` *reshapes* it (not
transposes) to ``(F, *out)``. Keras' ``same`` (``conv_utils.conv_connected_inputs``) puts
``k // 2`` before every output's window, whatever the stride, and ``ceil(L / s)`` outputs;
PyTorch's ``"same"`` puts ``(k - 1) // 2`` before, so the two differ for even kernels.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import ArgumentError, ShapeError, TieTypeError
from ._lc_function import output_size, window_reads


class KerasLayer(Protocol):
    """What ``from_keras`` reads of a tf_keras layer (or of a recording of one)."""

    def get_config(self) -> dict[str, Any]: ...

    def get_weights(self) -> list[Any]: ...


class KerasPort:
    """A Keras locally connected layer parsed: the tietorch layer's arguments and its dense
    weight (tietorch's layout, float64 numpy) and bias."""

    def __init__(self, layer: KerasLayer, n: int, name: str, input_size: Any) -> None:
        if not (
            callable(getattr(layer, "get_config", None))
            and callable(getattr(layer, "get_weights", None))
        ):
            raise TieTypeError(
                f"{name}: expected a tf_keras LocallyConnected{n}D layer (an object with "
                f"get_config() and get_weights()), got {type(layer).__name__}"
            )
        config = layer.get_config()
        self.name = name
        what = f"{name}({config.get('name', type(layer).__name__)!r})"
        kernel_size = tuple(int(k) for k in config["kernel_size"])
        if len(kernel_size) != n:
            raise ArgumentError(
                f"{what}: a {len(kernel_size)}-d layer (kernel_size={kernel_size}); use "
                f"LocallyConnected{len(kernel_size)}d.from_keras"
            )
        activation = config.get("activation", "linear")
        if activation not in (None, "linear"):
            raise ArgumentError(
                f"{what}: activation={activation!r} has no place in the layer; port a Keras "
                "layer built with activation='linear' and apply the activation after it (e.g. "
                "nn.Sequential(layer, nn.ReLU())): it is never dropped silently"
            )
        for key in ("kernel_constraint", "bias_constraint"):
            if config.get(key) is not None:
                raise ArgumentError(
                    f"{what}: {key}={config[key]!r} changes training and has no tietorch "
                    "equivalent; port the layer without it"
                )
        self.data_format = config.get("data_format", "channels_last")
        if self.data_format not in ("channels_last", "channels_first"):
            raise ArgumentError(f"{what}: unknown data_format {self.data_format!r}")
        self.padding = str(config.get("padding", "valid")).lower()
        if self.padding not in ("valid", "same"):
            raise ArgumentError(f"{what}: padding must be 'valid' or 'same', got {self.padding!r}")
        self.implementation = int(config.get("implementation", 1))
        if self.implementation not in (1, 2, 3):
            raise ArgumentError(f"{what}: unknown implementation {self.implementation}")
        self.kernel_size = kernel_size
        self.stride = tuple(int(s) for s in config.get("strides", (1,) * n))
        self.filters = int(config["filters"])
        self.use_bias = bool(config.get("use_bias", True))
        weights = [np.asarray(w) for w in layer.get_weights()]
        if len(weights) != 1 + self.use_bias:
            raise ShapeError(
                f"{what}: expected {1 + self.use_bias} weight arrays (use_bias="
                f"{self.use_bias}), got {len(weights)}: build the Keras layer first"
            )
        self.kernel = weights[0]
        self.bias = weights[1] if self.use_bias else None
        self.dtype = self.kernel.dtype
        self.input_size, self.in_channels = self._input_of(layer, n, input_size, what)
        self.output_size = tuple(
            _keras_output_length(size, k, s, self.padding)
            for size, k, s in zip(self.input_size, kernel_size, self.stride)
        )
        self.pads = tuple(
            _keras_pads(size, k, s, out, self.padding)
            for size, k, s, out in zip(self.input_size, kernel_size, self.stride, self.output_size)
        )
        self.weight = self._dense_weight(what)
        self.dense_bias = None if self.bias is None else self._bias(what)

    def _input_of(
        self, layer: KerasLayer, n: int, input_size: Any, what: str
    ) -> tuple[tuple[int, ...], int]:
        """The input's spatial size and channels: given, from the build config, or (for
        implementation 2) from the kernel's shape."""
        last = self.data_format == "channels_last"
        shape = None
        get_build_config = getattr(layer, "get_build_config", None)
        if callable(get_build_config):
            shape = (get_build_config() or {}).get("input_shape")
        if shape is not None:
            shape = tuple(shape)[1:]
            spatial, channels = (shape[:-1], shape[-1]) if last else (shape[1:], shape[0])
        elif self.implementation == 2:
            k = self.kernel.shape
            spatial, channels = (k[:n], k[n]) if last else (k[1 : n + 1], k[0])
        elif input_size is None:
            raise ArgumentError(
                f"{what}: the input's size is unknown (the layer was not built by a call, and "
                "implementation 1 and 3 kernels do not hold it): pass input_size="
            )
        else:
            spatial = None
            channels = None
        if input_size is not None:
            given = (input_size,) * n if isinstance(input_size, int) else tuple(input_size)
            if spatial is not None and tuple(spatial) != given:
                raise ShapeError(
                    f"{what}: input_size={given}, but the layer was built for {spatial}"
                )
            spatial = given
        if channels is None:  # implementation 1 or 3 without a build config
            channels = self._channels_from_kernel(n, what)
        assert spatial is not None
        return tuple(int(s) for s in spatial), int(channels)

    def _channels_from_kernel(self, n: int, what: str) -> int:
        if self.implementation == 1:
            return int(self.kernel.shape[1]) // math.prod(self.kernel_size)
        raise ArgumentError(
            f"{what}: an implementation 3 kernel does not show the input channels; build the "
            "Keras layer (call it once) so get_build_config() holds its input shape"
        )

    def _dense_weight(self, what: str) -> np.ndarray:
        """The kernel in tietorch's layout ``(*out, F, C, *k)``; entries facing only padding
        are 0."""
        out, ks, c, f = self.output_size, self.kernel_size, self.in_channels, self.filters
        n = len(ks)
        last = self.data_format == "channels_last"
        expected = {
            1: (math.prod(out), math.prod(ks) * c, f),
            2: (*self.input_size, c, *out, f) if last else (c, *self.input_size, f, *out),
        }.get(self.implementation)
        positions, inside = self._input_positions()
        if self.implementation == 3:  # one value per (location, offset inside, C, F)
            expected = (math.prod(int(ins.sum()) for ins in inside) * c * f,)
        if tuple(self.kernel.shape) != expected:
            raise ShapeError(
                f"{what}: implementation {self.implementation} kernel of shape "
                f"{tuple(self.kernel.shape)}, expected {expected} for an input of "
                f"{self.input_size} x {c} channels"
            )
        k = self.kernel.astype(np.float64, copy=False)
        if self.implementation == 1:
            patch = (*ks, c) if last else (c, *ks)
            w = k.reshape(*out, *patch, f)
            # -> (*out, F, C, *k)
            axes_c = n + n if last else n
            axes_k = list(range(n, n + n)) if last else list(range(n + 1, n + 1 + n))
            return w.transpose(*range(n), 2 * n + 1, axes_c, *axes_k)
        # Every (out, f, c, k) entry of the dense weight, as broadcast index grids.
        grids = np.meshgrid(
            *[np.arange(s) for s in out],
            np.arange(f),
            np.arange(c),
            *[np.arange(s) for s in ks],
            indexing="ij",
        )
        o, fi, ci, kk = grids[:n], grids[n], grids[n + 1], grids[n + 2 :]
        p = [positions[d][o[d], kk[d]] for d in range(n)]
        live = np.ones(o[0].shape, dtype=bool)
        for d in range(n):
            live &= inside[d][o[d], kk[d]]
        dense = np.zeros(o[0].shape, dtype=np.float64)
        pl = [q[live] for q in p]
        ol = [q[live] for q in o]
        if self.implementation == 2:
            if last:
                dense[live] = k[tuple([*pl, ci[live], *ol, fi[live]])]
            else:
                dense[live] = k[tuple([ci[live], *pl, fi[live], *ol])]
            return dense
        # implementation 3: the value of a pair is at its rank among the sorted pairs
        if last:
            out_index = np.ravel_multi_index((*ol, fi[live]), (*out, f))
            in_index = np.ravel_multi_index((*pl, ci[live]), (*self.input_size, c))
        else:
            out_index = np.ravel_multi_index((fi[live], *ol), (f, *out))
            in_index = np.ravel_multi_index((ci[live], *pl), (c, *self.input_size))
        key = out_index.astype(np.int64) * (math.prod(self.input_size) * c) + in_index
        rank = np.empty(len(key), dtype=np.int64)
        rank[np.argsort(key, kind="stable")] = np.arange(len(key))
        dense[live] = k[rank]
        return dense

    def _input_positions(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per dim, the input position each (output, kernel offset) reads and whether it lies
        inside the input (not in the padding)."""
        positions, inside = [], []
        for size, k, s, out, (before, _) in zip(
            self.input_size, self.kernel_size, self.stride, self.output_size, self.pads
        ):
            p = window_reads(out, k, s, before, 1).numpy()  # Keras has no dilation
            positions.append(np.clip(p, 0, size - 1))
            inside.append((p >= 0) & (p < size))
        return positions, inside

    def _bias(self, what: str) -> np.ndarray:
        assert self.bias is not None
        expected = (*self.output_size, self.filters)
        if tuple(self.bias.shape) != expected:
            raise ShapeError(f"{what}: bias of shape {tuple(self.bias.shape)}, expected {expected}")
        b = self.bias.astype(np.float64, copy=False)
        if self.data_format == "channels_first":  # bias_add reshapes (*out, F) to (F, *out)
            return np.moveaxis(b.reshape(self.filters, *self.output_size), 0, -1)
        return b

    def torch_dtype(self) -> torch.dtype:
        return torch.from_numpy(np.zeros(0, dtype=self.dtype)).dtype


def _keras_output_length(size: int, kernel: int, stride: int, padding: str) -> int:
    """``conv_utils.conv_output_length`` of tf_keras (no dilation): ``ceil(L / s)`` for
    ``same``, the unpadded conv's count for ``valid``."""
    if padding == "same":
        return -(-size // stride)
    return output_size(size, kernel, stride, 0, 0, 1)


def _keras_pads(size: int, kernel: int, stride: int, out: int, padding: str) -> tuple[int, int]:
    """(before, after) that give Keras' windows: ``k // 2`` before for ``same`` (whatever the
    stride), and after it what the last window needs (0 if it ends inside the input)."""
    if padding == "valid":
        return (0, 0)
    before = kernel // 2
    return (before, max(0, (out - 1) * stride + kernel - before - size))
