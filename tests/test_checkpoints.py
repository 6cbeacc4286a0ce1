"""Checkpoints are read without running code from them, and fit their factory or say why not."""

from __future__ import annotations

import builtins
import hashlib
import pickle
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from reporter.errors import CheckpointError, ReporterError
from reporter.model.checkpoints import import_factory, load_checkpoint
from reporter.provenance import file_sha256

FACTORY = "tests.test_checkpoints:make_lstm"


class TinyLSTM(torch.nn.Module):
    """A small recurrent model, as users' factories build them."""

    def __init__(self, input_size: int = 3, hidden_size: int = 5, num_layers: int = 1) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = torch.nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


def make_lstm(input_size: int = 3, hidden_size: int = 5, num_layers: int = 1) -> TinyLSTM:
    """Build the test model (the factory named by FACTORY)."""
    return TinyLSTM(input_size, hidden_size, num_layers)


class LightningLike(torch.nn.Module):
    """A Lightning module holds the network as an attribute: keys start with "model."."""

    def __init__(self) -> None:
        super().__init__()
        self.model = make_lstm()


class HyperParameters:
    """A custom object in a Lightning checkpoint: weights-only loading refuses it."""

    lr = 0.1


class WritesMarker:
    """A pickle payload whose unpickling creates a file: the side effect we must never allow."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _trained(**kwargs) -> TinyLSTM:
    torch.manual_seed(0)
    return make_lstm(**kwargs).eval()


def _window() -> torch.Tensor:
    return torch.randn(2, 7, 3, generator=torch.Generator().manual_seed(1))


def _saved(tmp_path: Path, obj: object, name: str = "model.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    with torch.no_grad():
        return torch.equal(a(_window()), b(_window()))


# state_dict and Lightning


def test_state_dict_with_factory_and_kwargs_round_trips(tmp_path):
    original = _trained(hidden_size=7, num_layers=2)
    path = _saved(tmp_path, original.state_dict())
    loaded = load_checkpoint(path, factory=FACTORY, factory_kwargs={"hidden_size": 7, "num_layers": 2})
    assert loaded.kind == "state_dict"
    assert loaded.onnx_model is None
    assert not loaded.module.training
    assert _same_outputs(original, loaded.module)


def test_state_dict_without_factory_asks_for_one(tmp_path):
    path = _saved(tmp_path, _trained().state_dict())
    message = _error(path)
    assert message.startswith(str(path)) and "--factory module:function" in message


def test_lightning_dict_with_prefixed_keys_fits_the_factory(tmp_path):
    wrapper = LightningLike()
    checkpoint = {"epoch": 3, "state_dict": wrapper.state_dict(), "hyper_parameters": {"lr": 0.1}}
    assert all(key.startswith("model.") for key in checkpoint["state_dict"])
    loaded = load_checkpoint(_saved(tmp_path, checkpoint, "last.ckpt"), factory=FACTORY)
    assert loaded.kind == "lightning"
    assert _same_outputs(wrapper.model.eval(), loaded.module)


def test_tutorial_style_model_state_dict_entry(tmp_path):
    original = _trained()
    path = _saved(tmp_path, {"epoch": 1, "model_state_dict": original.state_dict()})
    loaded = load_checkpoint(path, factory=FACTORY)
    assert loaded.kind == "state_dict"
    assert _same_outputs(original, loaded.module)


def test_lightning_dict_with_custom_objects_gives_its_weights_to_a_factory_without_trust(tmp_path):
    wrapper = LightningLike()
    path = _saved(tmp_path, {"state_dict": wrapper.state_dict(), "hyper_parameters": HyperParameters()})
    assert "--trust-pickle" in _error(path)  # without a factory the pickled objects are all there is
    for trust in (False, True):
        loaded = load_checkpoint(path, factory=FACTORY, trust_pickle=trust)
        assert loaded.kind == "lightning"
        assert _same_outputs(wrapper.model.eval(), loaded.module)


def test_lightning_checkpoint_from_a_library_that_is_not_installed(tmp_path, monkeypatch):
    """A training library's objects (a normaliser) and a __reduce__ payload in hyper_parameters:
    with a factory the weights load, nothing from the file runs, and the library need not exist."""
    library = tmp_path / "lib"
    library.mkdir()
    (library / "trainlib_not_installed.py").write_text(
        "class Normaliser:\n"
        "    def __init__(self, scale):\n"
        "        self.scale = scale\n"
        "    def __setstate__(self, state):\n"
        "        raise RuntimeError('the library ran')\n"
    )
    monkeypatch.syspath_prepend(str(library))
    import trainlib_not_installed

    marker = tmp_path / "pwned"
    wrapper = LightningLike()
    hyper = {"normaliser": trainlib_not_installed.Normaliser(2.0), "payload": WritesMarker(marker), "lr": 0.1}
    path = _saved(tmp_path, {"state_dict": wrapper.state_dict(), "hyper_parameters": hyper}, "epoch=3.ckpt")
    monkeypatch.delitem(sys.modules, "trainlib_not_installed")
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry != str(library)])
    for trust in (False, True):  # trusted, the full load fails on the missing library; the weights still load
        loaded = load_checkpoint(path, factory=FACTORY, trust_pickle=trust)
        assert loaded.kind == "lightning" and _same_outputs(wrapper.model.eval(), loaded.module)
        assert not marker.exists() or trust  # untrusted, the payload never runs
    assert "trainlib_not_installed" not in sys.modules


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = _trained().state_dict()
    state["lstm.bias"] = state.pop("rnn.weight_hh_l0")
    message = _error(_saved(tmp_path, state), factory=FACTORY)
    assert "does not fit the factory" in message
    assert "missing keys rnn.weight_hh_l0" in message
    assert "unexpected keys lstm.bias" in message


def test_a_wrapper_prefix_is_stripped_and_a_misfit_shows_the_nearest_mapping(tmp_path):
    state = _trained().state_dict()
    compiled = {f"model._orig_mod.{key}": value for key, value in state.items()}  # Lightning + torch.compile
    assert load_checkpoint(_saved(tmp_path, compiled, "compiled.pt"), factory=FACTORY).kind == "state_dict"
    renamed = {f"net.{key.replace('rnn.', 'lstm.')}": value for key, value in state.items()}
    message = _error(_saved(tmp_path, renamed, "renamed.pt"), factory=FACTORY)
    assert "(prefix 'net.' stripped)" in message
    assert "nearest: rnn.weight_ih_l0 ← lstm.weight_ih_l0" in message


def test_many_unexpected_keys_are_counted(tmp_path):
    state = _trained(num_layers=3).state_dict()
    message = _error(_saved(tmp_path, state), factory=FACTORY)
    assert "unexpected keys rnn.weight_ih_l1, rnn.weight_hh_l1, rnn.bias_ih_l1 (+5 more)" in message
    assert "missing" not in message


def test_shape_mismatch_is_named(tmp_path):
    message = _error(_saved(tmp_path, _trained(hidden_size=6).state_dict()), factory=FACTORY)
    assert "shape mismatch rnn.weight_ih_l0 (checkpoint [24, 3], model [20, 3])" in message


def test_factory_with_bad_kwargs_is_a_checkpoint_error(tmp_path):
    path = _saved(tmp_path, _trained().state_dict())
    message = _error(path, factory=FACTORY, factory_kwargs={"no_such_argument": 1})
    assert FACTORY in message and "TypeError" in message


# TorchScript and pickled modules


def test_torchscript_archive_loads(tmp_path):
    original = _trained()
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript announces its own deprecation
        torch.jit.save(torch.jit.trace(original, _window()), str(path))
    loaded = load_checkpoint(path)
    assert loaded.kind == "torchscript"
    assert not loaded.module.training
    assert _same_outputs(original, loaded.module)


def test_pickled_module_is_refused_without_trust(tmp_path):
    message = _error(_saved(tmp_path, _trained()))
    assert "--trust-pickle" in message and "tests.test_checkpoints.TinyLSTM" in message


def test_pickled_module_loads_with_trust(tmp_path):
    original = _trained()
    loaded = load_checkpoint(_saved(tmp_path, original), trust_pickle=True)
    assert loaded.kind == "pickled_module"
    assert _same_outputs(original, loaded.module)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_never_runs_without_trust(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save({"weights": WritesMarker(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(WritesMarker(marker), protocol=2))
    message = _error(path, factory=FACTORY)
    assert "--trust-pickle" in message and "pickled code (exec)" in message
    assert not marker.exists()
    # The payload does work when trusted, so the check above can fail.
    _error(path, factory=FACTORY, trust_pickle=True)
    assert marker.exists()


# Files that are not checkpoints


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    assert _error(path) == f"{path}: no such file"


def test_directory(tmp_path):
    assert _error(tmp_path) == f"{tmp_path}: not a file"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.touch()
    assert _error(path) == f"{path}: file is empty"


@pytest.mark.parametrize("legacy_format", [False, True])
def test_truncated_checkpoint(tmp_path, legacy_format):
    path = tmp_path / "model.pt"
    torch.save(_trained().state_dict(), path, _use_new_zipfile_serialization=not legacy_format)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = _error(path, factory=FACTORY)
    assert message.startswith(f"{path}: not a readable torch checkpoint")


@pytest.mark.parametrize("name", ["noise.pt", "noise"])
def test_random_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(random.Random(0).randbytes(4096))
    assert _error(path, factory=FACTORY).startswith(f"{path}: not a")


def test_weights_only_object_that_is_no_state_dict(tmp_path):
    message = _error(_saved(tmp_path, [torch.zeros(2)]), factory=FACTORY)
    assert "holds list" in message


# Factories


@pytest.mark.parametrize(
    "spec", ["make_lstm", "tests.test_checkpoints", "a:b:c", "a.:b", ":make", "a b:c", "tests/x.py:f"]
)
def test_malformed_factory_spec(spec):
    with pytest.raises(CheckpointError, match="expected 'package.module:function'"):
        import_factory(spec)


def test_factory_module_not_importable():
    with pytest.raises(CheckpointError) as caught:
        import_factory("tests.no_such_module:make")
    message = str(caught.value)
    assert message.startswith("factory tests.no_such_module:make: cannot import tests.no_such_module")
    assert "ModuleNotFoundError" in message and "\n" not in message


def test_factory_module_failing_on_import(tmp_path, monkeypatch):
    (tmp_path / "broken_models_for_test.py").write_text("raise ValueError('bad config\\nsecond line')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"cannot import broken_models_for_test: ValueError: bad config$"):
        import_factory("broken_models_for_test:make")


def test_factory_attribute_missing():
    with pytest.raises(CheckpointError, match="tests.test_checkpoints has no attribute make_gru"):
        import_factory("tests.test_checkpoints:make_gru")


def test_factory_found_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "user_models_for_test.py").write_text("def make():\n    return 'built'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "user_models_for_test", raising=False)
    path_before = list(sys.path)
    assert import_factory("user_models_for_test:make")() == "built"
    assert sys.path == path_before
    sys.modules.pop("user_models_for_test", None)


def test_factory_may_name_a_class_attribute():
    assert import_factory("tests.test_checkpoints:TinyLSTM.forward") is TinyLSTM.forward


# ONNX


def _onnx_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [weight],
    )
    return helper.make_model(graph)


def _save_external(model: onnx.ModelProto, path: Path) -> None:
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)


def _relocate(path: Path, location: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save_model(model, str(path))


def test_onnx_passes_through(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save_model(_onnx_model(), str(path))
    loaded = load_checkpoint(path, factory="ignored.for:onnx")
    assert (loaded.kind, loaded.module) == ("onnx", None)
    assert loaded.onnx_model == _onnx_model()


def test_onnx_external_data_inside_the_folder_loads(tmp_path):
    path = tmp_path / "model.onnx"
    _save_external(_onnx_model(), path)
    loaded = load_checkpoint(path)
    weight = numpy_helper.to_array(loaded.onnx_model.graph.initializer[0])
    assert weight.tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("escape", ["parent", "absolute"])
def test_onnx_external_data_escaping_the_folder_is_refused(tmp_path, escape):
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / "model.onnx"
    _save_external(_onnx_model(), path)
    outside = tmp_path / "weights.bin"
    outside.write_bytes((folder / "weights.bin").read_bytes())  # readable, so only our check stops it
    _relocate(path, "../weights.bin" if escape == "parent" else str(outside))
    message = _error(path)
    assert message.startswith(f"{path}: external data location")
    assert ("outside the model's folder" if escape == "parent" else "absolute path") in message


def test_onnx_that_is_not_protobuf(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\xff\xfe not a protobuf at all")
    assert _error(path).startswith(f"{path}: not a valid ONNX model")


# Hashes


def test_sha256_matches_hashlib(tmp_path):
    path = _saved(tmp_path, _trained().state_dict())
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == expected
    assert load_checkpoint(path, factory=FACTORY).sha256 == expected


def test_sha256_of_a_large_file_reads_in_chunks(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(random.Random(1).randbytes(3 * (1 << 20) + 17))
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha256_of_a_missing_file(tmp_path):
    with pytest.raises(ReporterError, match="nope.bin: cannot read"):
        file_sha256(tmp_path / "nope.bin")
