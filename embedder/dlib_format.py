"""Read the weights of dlib's face ResNet from its own file format (dlib ``serialize``), no dlib needed.

dlib writes a network outermost layer first: the loss layer, one version number per layer, then
the layers' contents from the input up. Integers are a control byte (low nibble: byte count, bit 7:
sign) and little-endian bytes; floats are an integer mantissa and exponent; tensors are a version
(2), four dimensions and little-endian float32 data. Only the layer kinds of the face network are
read (``con_4``, ``affine_``, ``relu_``, ``max_pool_2``, ``avg_pool_2``, ``add_prev_``, ``fc_2``);
anything else is an error naming the offset.

``read_dlib_face_resnet(path) -> {name: tensor}``: a state dict for
:class:`oneshot.embedder.face_resnet.FaceResNet29`, and the input's per-channel means.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from oneshot.errors import CorruptFileError


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.at, self.path = data, 0, path

    def fail(self, problem: str) -> CorruptFileError:
        return CorruptFileError(f"{self.path}: {problem} at byte {self.at} (not dlib's face ResNet file?)")

    def int(self) -> int:
        if self.at >= len(self.data):
            raise self.fail("file ends early")
        control = self.data[self.at]
        count = control & 0x0F
        value = int.from_bytes(self.data[self.at + 1 : self.at + 1 + count], "little")
        self.at += 1 + count
        return -value if control & 0x80 else value

    def text(self) -> str:
        size = self.int()
        if not 0 < size < 64:
            raise self.fail(f"expected a layer name, found a length of {size}")
        value = self.data[self.at : self.at + size].decode("latin-1")
        self.at += size
        return value

    def float(self) -> float:
        mantissa = self.int()
        return mantissa * 2.0 ** self.int()

    def flag(self) -> bool:
        value = self.data[self.at : self.at + 1]
        if value not in (b"0", b"1"):
            raise self.fail("expected a flag")
        self.at += 1
        return value == b"1"

    def tensor(self) -> np.ndarray:
        if self.int() != 2:
            raise self.fail("expected a tensor (version 2)")
        shape = [self.int() for _ in range(4)]
        count = int(np.prod(shape))
        if self.at + 4 * count > len(self.data):
            raise self.fail("tensor data runs past the end")
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.at).astype(np.float32)
        self.at += 4 * count
        return values.reshape(shape)

    def ints(self, count: int) -> list[int]:
        return [self.int() for _ in range(count)]

    def layer_tail(self) -> None:
        """What dlib's ``add_layer`` keeps after a layer: three flags and three (empty) tensors."""
        for _ in range(3):
            self.flag()
        for _ in range(3):
            self.tensor()


def read_layers(path: str | os.PathLike) -> tuple[list[float], list[dict]]:
    """The input means (R, G, B, in 0-255 levels) and the layers from the input up, as dicts."""
    path = Path(path)
    reader = _Reader(path.read_bytes(), path)
    if reader.int() != 1 or reader.text() != "loss_metric_2":
        raise reader.fail("expected dlib's metric loss layer")
    reader.float(), reader.float()  # margin and distance threshold of the training loss
    while reader.data[reader.at : reader.at + 2] != b"\x01\x15":  # one version per layer, then the input
        if reader.int() not in (1, 2, 3):
            raise reader.fail("unexpected layer version")
    if reader.text() != "input_rgb_image_sized":
        raise reader.fail("expected an RGB input layer")
    means = [reader.float() for _ in range(3)]
    reader.ints(2)  # input rows and columns (150 x 150)
    layers: list[dict] = []
    while reader.at < len(reader.data):
        name = reader.text()
        if name == "con_4":
            params = reader.tensor().ravel()
            filters, rows, cols, stride, _, padding, _ = reader.ints(7)
            shape = reader.ints(5)[1:]
            reader.ints(5)  # the biases' alias
            [reader.float() for _ in range(4)]  # learning-rate and weight-decay multipliers
            size = int(np.prod(shape))
            layers.append({"kind": "conv", "weight": params[:size].reshape(shape), "bias": params[size:],
                           "stride": stride, "padding": padding})
        elif name == "affine_":
            params = reader.tensor().ravel()
            reader.ints(10)  # the two aliases
            reader.int()  # mode (per channel)
            half = len(params) // 2
            layers.append({"kind": "affine", "gamma": params[:half], "beta": params[half:]})
        elif name == "fc_2":
            outputs, inputs = reader.ints(2)
            params = reader.tensor().ravel()
            reader.ints(10)
            reader.int()  # bias mode
            [reader.float() for _ in range(4)]
            layers.append({"kind": "fc", "weight": params[: inputs * outputs].reshape(inputs, outputs).T})
        elif name in ("max_pool_2", "avg_pool_2"):
            reader.ints(6)
            layers.append({"kind": name[:3] + "_pool"})
        elif name in ("relu_", "add_prev_"):
            layers.append({"kind": name.rstrip("_")})
        else:
            raise reader.fail(f"unknown layer {name!r}")
        reader.layer_tail()
        if len(layers) == 1:
            reader.int()  # the input layer's sample expansion factor
    return means, layers


def read_dlib_face_resnet(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[float]]:
    """A state dict for ``FaceResNet29`` from dlib's file, and the input's per-channel means (0-255)."""
    from torch import nn

    from oneshot.embedder.face_resnet import Affine, FaceResNet29

    means, layers = read_layers(path)
    convs = [layer for layer in layers if layer["kind"] == "conv"]
    affines = [layer for layer in layers if layer["kind"] == "affine"]
    fcs = [layer for layer in layers if layer["kind"] == "fc"]
    modules = list(FaceResNet29().named_modules())  # in the order dlib stores them, input first
    conv_names = [name for name, module in modules if isinstance(module, nn.Conv2d)]
    affine_names = [name for name, module in modules if isinstance(module, Affine)]
    if len(convs) != len(conv_names) or len(affines) != len(affine_names) or len(fcs) != 1:
        raise CorruptFileError(f"{path}: {len(convs)} convolutions, {len(affines)} affine layers and {len(fcs)} "
                               f"linear maps; the face ResNet has {len(conv_names)}, {len(affine_names)} and 1")
    state: dict[str, torch.Tensor] = {}
    for name, layer in zip(conv_names, convs):
        state[f"{name}.weight"] = torch.from_numpy(layer["weight"].copy())
        state[f"{name}.bias"] = torch.from_numpy(layer["bias"].copy())
    for name, layer in zip(affine_names, affines):
        state[f"{name}.gamma"] = torch.from_numpy(layer["gamma"].copy())
        state[f"{name}.beta"] = torch.from_numpy(layer["beta"].copy())
    state["fc.weight"] = torch.from_numpy(np.ascontiguousarray(fcs[0]["weight"]))
    return state, means
