"""A recurrent layer's weights, block by gate: sizes, norms and the recurrent blocks' spectra.

The gates show what a model did on the windows; the weights say what it can do on any input. Per
layer, direction and gate block, for the input weights W (units × inputs) and the recurrent
weights R (units × units) of a fused ONNX LSTM/GRU/RNN node:

    frobenius, max_abs   how large the block is
    singular values      of each recurrent block (all of them, largest first): how strongly the
                         block can amplify a state; σ_max > 1 can, σ_max < 1 only shrinks
    spectral_radius      max |eigenvalue| of the recurrent block: well above 1 warns of a state
                         that explodes when the gate lets it through, far below 1 of one that is
                         forgotten within a few steps

Blocks follow the operator's stacking (LSTM i o f c, GRU z r h, RNN one block; ONNX spec), named
by this package's gates (c → g, h → n for GRU's candidate). Each matrix is also kept binned to at
most `MAP_SIZE` × `MAP_SIZE` cells (means of the weights in each cell) for heatmaps. Cells built
from elementary ops, nodes inside control flow, and weights fed as graph inputs are left out:
there is no one initializer to read. `weight_blocks` keeps the blocks whole (up to `KEPT_VALUES`),
for the relative update ‖ΔW‖ / ‖W‖ between the checkpoints of a series.
"""

from __future__ import annotations

import numpy as np
import onnx
import pandas as pd
from onnx import numpy_helper

from reporter.layers import Layer

__all__ = ["KEPT_VALUES", "MAP_SIZE", "WEIGHT_COLUMNS", "layer_weights", "weight_blocks"]

KEPT_VALUES = 2_000_000  # weights kept whole for a series' updates: 8 MB, a 2 × 256-unit LSTM; larger ones are not
MAP_SIZE = 32  # heatmap cells per side at most: a layer of 8 blocks stays under 200 KB on a page
WEIGHT_COLUMNS = (
    "layer", "direction", "gate", "matrix", "rows", "cols", "frobenius", "max_abs", "spectral_radius",
    "sigma_max", "singular_values",
)  # fmt: skip
_BLOCKS = {"LSTM": ("i", "o", "f", "g"), "GRU": ("z", "r", "n"), "RNN": ("h",)}  # ONNX stacking, our gate names


def _binned(matrix: np.ndarray) -> np.ndarray:
    """The matrix averaged into at most MAP_SIZE × MAP_SIZE cells (as it is when smaller)."""
    rows = np.array_split(np.arange(matrix.shape[0]), min(MAP_SIZE, matrix.shape[0]))
    cols = np.array_split(np.arange(matrix.shape[1]), min(MAP_SIZE, matrix.shape[1]))
    return np.array([[matrix[np.ix_(r, c)].mean() for c in cols] for r in rows], np.float32)


def _row(layer: Layer, direction: int, gate: str, kind: str, block: np.ndarray) -> tuple:
    block64 = block.astype(np.float64)
    radius = sigma = np.nan
    values: list[float] = []
    if kind == "recurrent":
        values = np.linalg.svd(block64, compute_uv=False).tolist()
        sigma = values[0] if values else np.nan
        radius = float(np.abs(np.linalg.eigvals(block64)).max()) if block.size else np.nan
    return (
        layer.name, direction, gate, kind, block.shape[0], block.shape[1], float(np.linalg.norm(block64)),
        float(np.abs(block64).max()) if block.size else np.nan, radius, sigma, values,
    )  # fmt: skip


def _blocks(model: onnx.ModelProto, layers: list[Layer]):
    """Yield (layer, direction, gate, "input"|"recurrent", block) for every fused layer's weights."""
    nodes = {node.name: node for node in model.graph.node if node.op_type in _BLOCKS}
    initializers = {init.name: init for init in model.graph.initializer}
    for layer in layers:
        node = nodes.get(layer.node) if layer.cell == "fused" else None
        if node is None or len(node.input) < 3 or not {node.input[1], node.input[2]} <= initializers.keys():
            continue
        w, r = (numpy_helper.to_array(initializers[node.input[k]]) for k in (1, 2))  # [D, G·H, I], [D, G·H, H]
        hidden = layer.hidden_size
        for direction in range(w.shape[0]):
            for k, gate in enumerate(_BLOCKS[node.op_type]):
                for kind, matrix in (("input", w), ("recurrent", r)):
                    yield layer, direction, gate, kind, matrix[direction, k * hidden : (k + 1) * hidden]


def layer_weights(model: onnx.ModelProto, layers: list[Layer]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The weights table (WEIGHT_COLUMNS, one row per layer × direction × gate × matrix) and the
    binned matrices, keyed "LAYER/DIRECTION/GATE/input|recurrent", of every fused layer."""
    rows, maps = [], {}
    for layer, direction, gate, kind, block in _blocks(model, layers):
        rows.append(_row(layer, direction, gate, kind, block))
        maps[f"{layer.name}/{direction}/{gate}/{kind}"] = _binned(block)
    frame = pd.DataFrame(rows, columns=list(WEIGHT_COLUMNS))
    return frame.astype({column: _dtype(column) for column in WEIGHT_COLUMNS}), maps


def weight_blocks(model: onnx.ModelProto, layers: list[Layer], limit: int = KEPT_VALUES) -> dict[str, np.ndarray]:
    """Every fused block as it is (float32, keyed as `layer_weights`' maps), so that two checkpoints
    of a series can be subtracted; none when they hold more than `limit` values in all."""
    blocks = {f"{layer.name}/{d}/{gate}/{kind}": block for layer, d, gate, kind, block in _blocks(model, layers)}
    if sum(block.size for block in blocks.values()) > limit:
        return {}
    return {key: np.ascontiguousarray(block, dtype=np.float32) for key, block in blocks.items()}


def _dtype(column: str):
    """Fixed column types, so a parquet written from the table is byte-identical."""
    if column in ("layer", "gate", "matrix"):
        return str
    if column == "singular_values":
        return object
    return np.int64 if column in ("direction", "rows", "cols") else np.float64
