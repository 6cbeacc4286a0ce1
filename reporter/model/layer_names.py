"""Readable, unique, stable layer names, from where a recurrent node or cell came from.

Torch exports name a layer by its module path and index ("rnn.l0", "rnn.l1"), read from the
dynamo exporter's name scopes or the legacy exporter's "/a/b/LSTM" node names; tf2onnx exports
by the Keras layer, read from the TensorFlow scope its tensors keep ("model/encoder_lstm/…");
anything else by its node's name, or by its kind.
"""

from __future__ import annotations

import ast
import re

import onnx

from reporter.model.graph_builder import fresh_name

__all__ = ["LayerNamer", "module_path"]

_GENERATED_NAME = re.compile(r"(LSTM|GRU|RNN)__\d+")  # tf2onnx's names for the nodes it fuses
_TF_INTERNAL = {"PartitionedCall", "StatefulPartitionedCall"}  # TensorFlow's own scopes inside a Keras layer
_INLINED = re.compile(r"^.*__Inline_\d+__(?=/)")  # ONNX's inliner prefixes "If_0_then_branch__Inline_0__"


def module_path(node: onnx.NodeProto) -> str | None:
    """The torch module path a node came from (dynamo name scopes or legacy '/a/b/LSTM'), if any."""
    meta = {p.key: p.value for p in node.metadata_props}
    name = _INLINED.sub("", node.name)
    if "pkg.torch.onnx.name_scopes" in meta:
        try:
            scopes = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])
        except (ValueError, SyntaxError):
            scopes = []
        return ".".join(s for s in scopes[1:-1] if s) or None
    if name.startswith("/"):
        return ".".join(p for p in name.strip("/").split("/")[:-1] if p) or None
    return None


def _tf_scope(tensors) -> str | None:
    """The Keras layer a tf2onnx tensor came from: "model/encoder_lstm/PartitionedCall/transpose:0",
    "model/gru/while/gru_cell/add:0" and "model/lstm/lstm_cell/add:0" (unrolled) keep the layer's
    scope before TensorFlow's own."""
    for tensor in tensors:
        parts = tensor.split(":")[0].split("/")
        cut = next((k for k, part in enumerate(parts) if _tf_internal(part)), None)
        if cut is not None and cut > 0:
            return ".".join(parts[1:cut] if cut > 1 else parts[:cut])  # without the model's own name
    return None


def _tf_internal(part: str) -> bool:
    """TensorFlow's scopes inside a Keras layer: its call, its while loop, its cell ("lstm_cell")."""
    return part in _TF_INTERNAL or part.startswith("while") or part.endswith("_cell")


class LayerNamer:
    """Hands out layer names in graph order, each unique."""

    def __init__(self):
        self.used: set[str] = set()
        self.per_module: dict[tuple[str, str], int] = {}

    def name(self, node: onnx.NodeProto, kind: str, fused: bool, branch: list[str] | tuple = ()) -> str:
        """A fused node's layer name, or (`fused` False) that of a cell whose first step `node` writes.

        Layers in different branches of an `If` are alternatives, not a stack: each branch counts its
        own ".l0", and a name another branch already took gets the branch ("decoder.rnn.l0@else")."""
        path = module_path(node)
        if fused and not (path is not None or not node.name or _INLINED.sub("", node.name).startswith("/")):
            scope = _tf_scope(node.input) if _GENERATED_NAME.fullmatch(node.name) else None
            return fresh_name(self.used, scope or node.name)
        if not fused and path is None:
            scope = _tf_scope([*node.output, *node.input])
            if scope:
                return fresh_name(self.used, scope)
        return self._indexed(path or (kind.lower() if fused else f"{kind.lower()}_cell"), list(branch))

    def _indexed(self, base: str, branch: list[str]) -> str:
        """ "rnn.l0", "rnn.l1": the k-th layer of one module (within one branch)."""
        alternatives = [level for level in branch if level.startswith("If ")]  # loops run in turn: a stack
        key = (base, " › ".join(alternatives))
        k = self.per_module.setdefault(key, 0)
        self.per_module[key] = k + 1
        name = f"{base}.l{k}"
        if name in self.used and alternatives:
            name += "@" + ".".join(level.split()[-1].removesuffix("_branch") for level in alternatives)
        return fresh_name(self.used, name)
