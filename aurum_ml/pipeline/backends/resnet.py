"""dlib's face-recognition ResNet, run by ONNX Runtime: the same weights, the same vectors.

dlib-bin is built without BLAS, so its descriptor runs dlib's own convolution loops: about
70 ms a face on these CPUs, half of a job's CPU. This module reads the network's weights
from dlib's own model file (``dlib_face_recognition_resnet_model_v1.dat`` in
``face_recognition_models``: nothing is downloaded, nothing else is loaded), writes the
same network as an ONNX graph in memory, and runs it with ONNX Runtime: about 3 ms a face,
and every component of the vector within 1e-6 of dlib's (tests/unit/test_resnet.py checks
both on every test photo). dlib stays available (``EMBED_ENGINE=dlib``).

The network (dlib's ``dnn_face_recognition_ex.cpp``): a 150 × 150 RGB chip, less dlib's
channel means, divided by 256 → conv 7×7/2 → affine → relu → max pool 3×3/2 → 14 residual
blocks (32, 32, 32, 64↓, 64, 64, 64, 128↓, 128, 128, 256↓, 256, 256, 256↓; ↓ = the block's
first conv has stride 2 and its shortcut is a 2×2/2 average pool) → global average →
128 × 256 matrix. Two of dlib's conventions matter for equality: a conv or pool with
stride 2 has no padding, and a residual sum of tensors of different shapes (more channels
in the block than in its shortcut; 3 × 3 beside 4 × 4 after the third ↓) is as large as
the larger of each, the smaller zero-padded at the end. The affine layers (batch norm,
frozen) are folded into the conv before them.

dlib's file format, as far as read here (``dlib/serialize.h``, ``dlib/dnn/*.h``): an
integer is one byte of length (0x80 = negative) and that many little-endian bytes; a string
is its length and its bytes; a float is an integer mantissa and an integer exponent; a
tensor is version 2, four sizes and its values as little-endian float32. Each layer's
record starts with its name (``con_4``, ``affine_``, …) and the records come in the order
the data flows; between them are only version numbers, flags and empty tensors (no
letters), so the next record is the next known name.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aurum_ml.errors import ConfigError

__all__ = ["ResNetDescriptor", "read_layers", "to_onnx"]

FILE = "dlib_face_recognition_resnet_model_v1.dat"
CHIP = 150  # px: the network's input side
DIM = 128

_NAMES = (
    b"input_rgb_image_sized",
    b"con_4",
    b"affine_",
    b"relu_",
    b"max_pool_2",
    b"avg_pool_2",
    b"add_prev_",
    b"fc_2",
)
_RECORD = re.compile(rb"\x01[\x04-\x20](" + b"|".join(re.escape(n) for n in _NAMES) + rb")")


@dataclass
class Layer:
    """One record of dlib's file: its name and what the network needs of it."""

    kind: str
    weights: np.ndarray | None = None  # conv: (out, in, h, w); fc: (in, out)
    bias: np.ndarray | None = None  # conv: (out,)
    gamma: np.ndarray | None = None  # affine: per channel
    beta: np.ndarray | None = None
    window: tuple[int, int] = (0, 0)  # pool: (h, w); 0 × 0 = the whole tensor
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    mean: tuple[float, ...] = field(default_factory=tuple)  # input: R, G, B


class _Reader:
    def __init__(self, data: bytes, at: int) -> None:
        self.data, self.at = data, at

    def int(self) -> int:
        head = self.data[self.at]
        size = head & 0x0F
        value = int.from_bytes(self.data[self.at + 1 : self.at + 1 + size], "little")
        self.at += 1 + size
        return -value if head & 0x80 else value

    def str(self) -> str:
        size = self.int()
        text = self.data[self.at : self.at + size].decode("ascii")
        self.at += size
        return text

    def float(self) -> float:
        mantissa = self.int()
        return float(mantissa * 2.0 ** self.int())

    def tensor(self) -> np.ndarray:
        if (version := self.int()) != 2:
            raise ValueError(f"tensor version {version}")
        count = self.int() * self.int() * self.int() * self.int()
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.at)
        self.at += 4 * count
        return values.astype(np.float32)


def _record(reader: _Reader) -> Layer:
    kind = reader.str()
    if kind == "input_rgb_image_sized":
        mean = tuple(reader.float() for _ in range(3))
        if (reader.int(), reader.int()) != (CHIP, CHIP):
            raise ValueError("input is not 150 × 150")
        return Layer(kind, mean=mean)
    if kind == "con_4":
        params = reader.tensor()
        filters, rows, cols, sy, sx, py, px = (reader.int() for _ in range(7))
        inputs = (params.size - filters) // (filters * rows * cols)
        cut = filters * inputs * rows * cols
        if cut + filters != params.size:
            raise ValueError("conv parameters do not add up")
        weights = params[:cut].reshape(filters, inputs, rows, cols)
        return Layer(kind, weights=weights, bias=params[cut:], stride=(sy, sx), padding=(py, px))
    if kind == "affine_":
        params = reader.tensor()
        half = params.size // 2
        return Layer(kind, gamma=params[:half], beta=params[half:])
    if kind in ("max_pool_2", "avg_pool_2"):
        rows, cols, sy, sx, py, px = (reader.int() for _ in range(6))
        return Layer(kind, window=(rows, cols), stride=(sy, sx), padding=(py, px))
    if kind == "fc_2":
        outputs, inputs = reader.int(), reader.int()
        return Layer(kind, weights=reader.tensor().reshape(inputs, outputs))
    return Layer(kind)  # relu_, add_prev_: nothing to read


def read_layers(path: Path) -> list[Layer]:
    """The layers of dlib's model file, in the order the data flows through them."""
    try:
        data = path.read_bytes()
        layers, at = [], 0
        while match := _RECORD.search(data, at):
            reader = _Reader(data, match.start())
            layers.append(_record(reader))
            at = reader.at
    except (OSError, ValueError, IndexError, ZeroDivisionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read dlib's face model {path}: {exc}") from exc
    if not layers or layers[0].kind != "input_rgb_image_sized" or layers[-1].kind != "fc_2":
        raise ConfigError(f"{path} is not dlib's face-recognition ResNet")
    return layers


class _Graph:
    """The ONNX graph being written: nodes and constants, fresh names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.constants: list[Any] = []

    def add(self, op: str, inputs: list[str], **attributes: Any) -> str:
        from onnx import helper

        out = f"{op.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [out], **attributes))
        return out

    def const(self, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = f"w{len(self.constants)}"
        self.constants.append(numpy_helper.from_array(value, name))
        return name


@dataclass
class _Value:
    name: str
    channels: int
    side: int


def _conv(graph: _Graph, x: _Value, conv: Layer, affine: Layer) -> _Value:
    """conv then affine, as one conv: w·γ, b·γ + β (per output channel)."""
    assert conv.weights is not None and conv.bias is not None
    assert affine.gamma is not None and affine.beta is not None
    if affine.gamma.size != conv.weights.shape[0]:  # an affine per channel (dlib's CONV_MODE)
        raise ConfigError("an affine layer of dlib's ResNet does not match its conv")
    gamma = affine.gamma.astype(np.float64)
    weights = (conv.weights * gamma[:, None, None, None]).astype(np.float32)
    bias = (conv.bias * gamma + affine.beta).astype(np.float32)
    size, (stride, _), (pad, _) = conv.weights.shape[2], conv.stride, conv.padding
    name = graph.add(
        "Conv",
        [x.name, graph.const(weights), graph.const(bias)],
        kernel_shape=list(conv.weights.shape[2:]),
        strides=list(conv.stride),
        pads=[*conv.padding, *conv.padding],
    )
    return _Value(name, weights.shape[0], (x.side + 2 * pad - size) // stride + 1)


def _pool(graph: _Graph, op: str, x: _Value, pool: Layer) -> _Value:
    (size, _), (stride, _), (pad, _) = pool.window, pool.stride, pool.padding
    name = graph.add(
        op,
        [x.name],
        kernel_shape=list(pool.window),
        strides=list(pool.stride),
        pads=[*pool.padding, *pool.padding],
    )
    return _Value(name, x.channels, (x.side + 2 * pad - size) // stride + 1)


def _padded(graph: _Graph, x: _Value, channels: int, side: int) -> str:
    """x zero-padded at the end to ``channels`` × ``side`` × ``side`` (dlib's add_prev)."""
    if (x.channels, x.side) == (channels, side):
        return x.name
    grow = np.array([0, 0, 0, 0, 0, channels - x.channels, side - x.side, side - x.side])
    return graph.add("Pad", [x.name, graph.const(grow.astype(np.int64))])


def to_onnx(layers: list[Layer]) -> bytes:
    """The network of :func:`read_layers` as a serialized ONNX model: input ``chips``
    (N × 3 × 150 × 150 float32, already ``(pixel − mean) / 256``), output ``vectors``
    (N × 128 float32)."""
    from onnx import TensorProto, checker, helper

    graph = _Graph()
    kinds = [layer.kind for layer in layers]
    if kinds[1:5] != ["con_4", "affine_", "relu_", "max_pool_2"]:
        raise ConfigError(f"unexpected start of dlib's face-recognition ResNet: {kinds[:5]}")
    x = _conv(graph, _Value("chips", 3, CHIP), layers[1], layers[2])
    x = _pool(graph, "MaxPool", _Value(graph.add("Relu", [x.name]), x.channels, x.side), layers[4])
    at = 5
    block = ["con_4", "affine_", "relu_", "con_4", "affine_"]
    while kinds[at : at + 5] == block:
        h = _conv(graph, x, layers[at], layers[at + 1])
        h = _Value(graph.add("Relu", [h.name]), h.channels, h.side)
        h = _conv(graph, h, layers[at + 3], layers[at + 4])
        at += 5
        shortcut = x
        if kinds[at] == "avg_pool_2":  # a block that halves the side
            shortcut = _pool(graph, "AveragePool", x, layers[at])
            at += 1
        if kinds[at : at + 2] != ["add_prev_", "relu_"]:
            raise ConfigError(f"unexpected layer in dlib's ResNet at record {at}: {kinds[at]}")
        channels, side = max(shortcut.channels, h.channels), max(shortcut.side, h.side)
        total = graph.add(
            "Add", [_padded(graph, shortcut, channels, side), _padded(graph, h, channels, side)]
        )
        x = _Value(graph.add("Relu", [total]), channels, side)
        at += 2
    fc = layers[at + 1] if at + 1 < len(layers) else None
    if kinds[at:] != ["avg_pool_2", "fc_2"] or layers[at].window != (0, 0) or fc is None:
        raise ConfigError(f"unexpected end of dlib's face-recognition ResNet: {kinds[at:]}")
    assert fc.weights is not None
    pooled = graph.add("Flatten", [graph.add("GlobalAveragePool", [x.name])])
    graph.nodes.append(helper.make_node("MatMul", [pooled, graph.const(fc.weights)], ["vectors"]))
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "dlib_face_recognition_resnet_model_v1",
            [helper.make_tensor_value_info("chips", TensorProto.FLOAT, ["n", 3, CHIP, CHIP])],
            [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, ["n", DIM])],
            graph.constants,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    checker.check_model(model)
    return bytes(model.SerializeToString())


class ResNetDescriptor:
    """dlib's descriptor on ONNX Runtime. Built on first use (≈ 0.8 s: onnx imported, the
    file read, the graph written, the session made), once per process; thread-safe.
    ``folder`` is the model folder, or how to find it then (a process that never embeds
    never looks)."""

    def __init__(self, folder: Path | Callable[[], Path], threads: int = 1) -> None:
        self._folder = folder
        self._threads = threads
        self._lock = threading.Lock()
        self._session: Any = None
        self._mean = np.zeros(3, dtype=np.float32)

    def _load(self) -> Any:
        if self._session is not None:  # every call after the first: no lock
            return self._session
        with self._lock:
            if self._session is None:
                try:
                    import onnxruntime
                except ImportError as exc:  # e.g. a platform without its wheel
                    raise ConfigError(
                        f"ONNX Runtime cannot be loaded ({exc}): install the project's "
                        "dependencies, or set EMBED_ENGINE=dlib to run dlib's descriptor"
                    ) from exc
                folder = self._folder if isinstance(self._folder, Path) else self._folder()
                layers = read_layers(folder / FILE)
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = self._threads  # EMBED_THREADS
                options.inter_op_num_threads = 1
                session = onnxruntime.InferenceSession(
                    to_onnx(layers), options, providers=["CPUExecutionProvider"]
                )
                self._mean = np.array(layers[0].mean, dtype=np.float32)
                self._session = session
            return self._session

    def warm_up(self) -> None:
        self._load()

    def describe(self, chips: np.ndarray) -> np.ndarray:
        """N aligned 150 × 150 RGB uint8 chips (N × 150 × 150 × 3) → N × 128 float32."""
        session = self._load()
        batch = (chips.astype(np.float32) - self._mean) / np.float32(256)
        planar = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        vectors = session.run(["vectors"], {"chips": planar})[0]
        return np.asarray(vectors, dtype=np.float32)
