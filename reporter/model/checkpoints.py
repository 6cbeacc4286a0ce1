"""Read a checkpoint safely: the first step of every report.

Five kinds are understood, tried in this order:

    .onnx file        passed through (external data must stay inside the model's folder)
    TorchScript zip   torch.jit.load
    state_dict        torch.load(weights_only=True), weights poured into the `--factory` module
    Lightning dict    the same, from its "state_dict" entry with the wrapper's prefix stripped
    pickled module    only with trust_pickle: unpickling runs code from the file

Nothing in a file runs unless the user passed `--trust-pickle`; every failure is a
`CheckpointError` naming the file and the problem in one line.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx
import torch

from reporter.errors import CheckpointError
from reporter.model.placeholder_pickle import load_with_placeholders
from reporter.provenance import file_sha256

__all__ = ["KINDS", "LoadedCheckpoint", "cwd_on_sys_path", "import_factory", "load_checkpoint"]

KINDS = ("state_dict", "lightning", "torchscript", "pickled_module", "onnx")
_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_PICKLED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_UNPICKLER_PROBLEM = re.compile(r"Unsupported [^\n]*")
_NAMED = 3  # keys named in a mismatch message before "(+N more)"


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint as the rest of Gate Reporter sees it."""

    path: Path
    kind: str  # one of KINDS
    module: torch.nn.Module | None  # in eval mode, on CPU; None when kind == "onnx"
    onnx_model: onnx.ModelProto | None  # only when kind == "onnx"
    sha256: str  # of the file's bytes


def load_checkpoint(
    path: str | os.PathLike, factory: str | None = None, factory_kwargs: dict | None = None, trust_pickle: bool = False
) -> LoadedCheckpoint:
    """Read `path` without running code from it (unless `trust_pickle`)."""
    path = Path(path)
    _check_file(path)
    digest = file_sha256(path)
    if path.suffix.lower() == ".onnx":
        return LoadedCheckpoint(path, "onnx", None, _load_onnx(path), digest)
    if _is_torchscript(path):
        kind, module = "torchscript", _load_torchscript(path)
    else:
        kind, module = _load_torch(path, factory, factory_kwargs or {}, trust_pickle)
    return LoadedCheckpoint(path, kind, module.cpu().eval(), None, digest)


def import_factory(spec: str) -> Callable[..., torch.nn.Module]:
    """Find the user's model-building function from "package.module:function"."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise CheckpointError(f"factory {spec!r}: expected 'package.module:function'")
    module_name, attribute = spec.split(":")
    with cwd_on_sys_path():
        try:
            target = importlib.import_module(module_name)
        except Exception as exc:
            raise CheckpointError(f"factory {spec}: cannot import {module_name}: {_one_line(exc)}") from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CheckpointError(f"factory {spec}: {module_name} has no attribute {attribute}")
        target = getattr(target, part)
    if not callable(target):
        raise CheckpointError(f"factory {spec}: {attribute} is not callable")
    return target


@contextmanager
def cwd_on_sys_path() -> Iterator[None]:
    """Let users name modules of the repo they run from, as `python -m` does."""
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if cwd in sys.path:
            sys.path.remove(cwd)


def _check_file(path: Path) -> None:
    """Turn the usual file-system mistakes into one-line errors."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")


def _load_onnx(path: Path) -> onnx.ModelProto:
    """Read an ONNX model, loading external data only from inside its folder."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a valid ONNX model: {_one_line(exc)}") from exc
    if not model.graph.node:
        raise CheckpointError(f"{path}: not a valid ONNX model: its graph has no nodes")
    locations = _external_locations(model)
    for location in locations:
        _check_location(path, location)
    if locations:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read external data: {_one_line(exc)}") from exc
    return model


def _external_locations(model: onnx.ModelProto) -> list[str]:
    """List the files the model's tensors say they live in."""
    tensors = list(_graph_tensors(model.graph))
    for function in model.functions:
        tensors += [t for node in function.node for t in _node_tensors(node)]
    return [
        entry.value
        for tensor in tensors
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    ]


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Yield every tensor of a graph, its subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    """Yield the tensors held in a node's attributes, subgraphs included."""
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        if attribute.HasField("g"):
            yield from _graph_tensors(attribute.g)
        for graph in attribute.graphs:
            yield from _graph_tensors(graph)


def _check_location(path: Path, location: str) -> None:
    """Refuse external data that would be read from outside the model's folder."""
    folder = path.parent.resolve()
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).drive or location.startswith("\\"):
        raise CheckpointError(f"{path}: external data location {location!r} is an absolute path")
    if not (folder / location).resolve().is_relative_to(folder):
        raise CheckpointError(f"{path}: external data location {location!r} points outside the model's folder")


def _is_torchscript(path: Path) -> bool:
    """Tell a TorchScript archive (it holds code/ and constants.pkl) from a torch.save zip."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            parts = {part for name in archive.namelist() for part in name.split("/")}
    except (zipfile.BadZipFile, OSError):
        return False
    return {"code", "constants.pkl"} <= parts


def _load_torchscript(path: Path) -> torch.nn.Module:
    """Read a TorchScript archive (its code is TorchScript, not arbitrary Python)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read TorchScript archive: {_one_line(exc)}") from exc


def _load_torch(
    path: Path, factory: str | None, factory_kwargs: dict, trust_pickle: bool
) -> tuple[str, torch.nn.Module]:
    """Read a torch.save file: weights only, or pickled code when the user trusts it."""
    try:
        loaded = _torch_load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        loaded = _load_pickled(path, _pickled_code(path, exc), factory, trust_pickle)
        if isinstance(loaded, torch.nn.Module):
            return "pickled_module", loaded
    return _module_from_state(path, loaded, factory, factory_kwargs)


def _load_pickled(path: Path, code: str, factory: str | None, trust_pickle: bool) -> object:
    """A file that holds pickled code: run it only when trusted; else, with a factory, read just
    its tensors, every other object left as an inert placeholder (`placeholder_pickle`)."""
    if trust_pickle:
        try:
            with cwd_on_sys_path():
                return _torch_load(path, weights_only=False)
        except CheckpointError:
            if factory is None:
                raise  # e.g. the training library is not installed; with a factory its weights still load
    hint = "" if factory else ", or --factory MODULE:FUNCTION to read only its weights (no code runs)"
    refusal = CheckpointError(
        f"{path}: holds pickled code ({code}); pass --trust-pickle to load it, which runs code from the file{hint}"
    )
    if factory is None:
        raise refusal
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded, _ = load_with_placeholders(path)
    except Exception:  # noqa: BLE001 - not a torch archive its tensors can be read from: refused as pickled code
        raise refusal from None
    if _state_dict_in(loaded) is None:
        raise refusal
    return loaded


def _torch_load(path: Path, weights_only: bool) -> object:
    """Call torch.load quietly; failures other than a refused pickle become CheckpointErrors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:
        if weights_only and isinstance(exc, pickle.UnpicklingError):
            raise
        problem = "the file ends early (truncated?)" if isinstance(exc, EOFError) else _one_line(exc)
        raise CheckpointError(f"{path}: not a readable torch checkpoint: {problem}") from exc


def _pickled_code(path: Path, exc: pickle.UnpicklingError) -> str:
    """The pickled global the weights-only reader stopped at; garbage is an error at once."""
    pickled = _PICKLED_GLOBAL.search(str(exc))
    if pickled is None:
        raise CheckpointError(f"{path}: not a torch checkpoint: {_unpickler_problem(exc)}") from exc
    return pickled.group(1)


def _unpickler_problem(exc: pickle.UnpicklingError) -> str:
    """Pick the phrase of torch's long weights-only message that says what went wrong."""
    found = _UNPICKLER_PROBLEM.search(str(exc))
    return found.group(0) if found else "the weights-only unpickler refused it"


def _module_from_state(
    path: Path, loaded: object, factory: str | None, factory_kwargs: dict
) -> tuple[str, torch.nn.Module]:
    """Build the factory's module and pour a state_dict (plain or Lightning) into it."""
    kind, state = _find_state_dict(path, loaded)
    if factory is None:
        raise CheckpointError(f"{path}: holds a {kind}; pass --factory module:function to build its model")
    module = _build(path, factory, factory_kwargs)
    _fit(path, module, state)
    return kind, module


def _state_dict_in(loaded: object) -> tuple[str, Mapping[str, torch.Tensor]] | None:
    """The kind of weights dictionary the file holds and the dictionary, or None."""
    if _is_tensor_dict(loaded):
        return "state_dict", loaded
    if isinstance(loaded, Mapping):
        for key, kind in (("state_dict", "lightning"), ("model_state_dict", "state_dict")):
            if _is_tensor_dict(loaded.get(key)):
                return kind, loaded[key]
    return None


def _find_state_dict(path: Path, loaded: object) -> tuple[str, Mapping[str, torch.Tensor]]:
    """Say which kind of weights dictionary the file holds, and return it."""
    found = _state_dict_in(loaded)
    if found is not None:
        return found
    if isinstance(loaded, Mapping):
        what = f"a dict with keys {_some(sorted(map(str, loaded)))}"
    else:
        what = type(loaded).__name__
    raise CheckpointError(f"{path}: holds {what}, not a state_dict, Lightning checkpoint or module")


def _is_tensor_dict(value: object) -> bool:
    """Tell a state_dict: a non-empty mapping of names to tensors."""
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(key, str) and isinstance(item, torch.Tensor) for key, item in value.items())
    )


def _build(path: Path, factory: str, factory_kwargs: dict) -> torch.nn.Module:
    """Call the user's factory, turning its failures into one-line errors."""
    make = import_factory(factory)
    try:
        module = make(**factory_kwargs)
    except Exception as exc:
        raise CheckpointError(f"{path}: factory {factory} failed: {_one_line(exc)}") from exc
    if not isinstance(module, torch.nn.Module):
        returned = type(module).__name__
        raise CheckpointError(f"{path}: factory {factory} returned {returned}, not a torch.nn.Module")
    return module


def _fit(path: Path, module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load weights strictly, after stripping the wrapper prefix that makes the keys fit."""
    expected = module.state_dict()
    prefix = min(_shared_prefixes(state), key=lambda prefix: len(expected.keys() ^ _strip(state, prefix).keys()))
    best = _strip(state, prefix)
    problems = _key_mismatch(expected, best) + _shape_mismatch(expected, best)
    if problems:
        stripped = f" (prefix {prefix!r} stripped)" if prefix else ""
        raise CheckpointError(
            f"{path}: state_dict does not fit the factory{stripped}: {'; '.join(problems)}{_nearest(expected, best)}"
        )
    try:
        module.load_state_dict(best, strict=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: state_dict does not fit the factory: {_one_line(exc)}") from exc


def _nearest(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str:
    """For the first missing keys, the checkpoint key that reads most like each: a mapping to try."""
    unexpected = [key for key in state if key not in expected]
    missing = [key for key in expected if key not in state][:_NAMED]
    pairs = [(key, difflib.get_close_matches(key, unexpected, n=1, cutoff=0.5)) for key in missing]
    shown = [f"{key} ← {match[0]}" for key, match in pairs if match]
    return f"; nearest: {', '.join(shown)}" if shown else ""


def _shared_prefixes(state: Mapping[str, torch.Tensor]) -> list[str]:
    """List "", then every dotted prefix ("model.", "model.net.") that all keys share."""
    split = [key.split(".")[:-1] for key in state]
    prefixes = [""]
    for depth in range(1, min(map(len, split)) + 1):
        heads = {tuple(parts[:depth]) for parts in split}
        if len(heads) != 1:
            break
        prefixes.append(".".join(heads.pop()) + ".")
    return prefixes


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop `prefix` from every key."""
    return {key[len(prefix) :]: value for key, value in state.items()}


def _key_mismatch(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> list[str]:
    """Name the missing and unexpected keys, the first few of each."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    named = (("missing", missing), ("unexpected", unexpected))
    return [f"{label} keys {_some(keys)}" for label, keys in named if keys]


def _shape_mismatch(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> list[str]:
    """Name the keys whose shapes differ between checkpoint and module."""
    wrong = [
        f"{key} (checkpoint {list(state[key].shape)}, model {list(value.shape)})"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    return [f"shape mismatch {_some(wrong)}"] if wrong else []


def _some(names: list[str]) -> str:
    """Name the first few items and count the rest, to keep messages one line."""
    shown = ", ".join(names[:_NAMED])
    return shown + (f" (+{len(names) - _NAMED} more)" if len(names) > _NAMED else "")


def _one_line(exc: BaseException) -> str:
    """Describe an exception by its type and the first sentence of its message."""
    lines = str(exc).strip().splitlines()
    first = re.split(r"(?<=\.)\s", lines[0], maxsplit=1)[0] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
