"""GateReportCallback: a tiny LSTM trained for three epochs leaves one ONNX file and one state_dict
per epoch, each ONNX file replays to its epoch's hidden states, the reporter.toml it writes loads as
a series with the training metrics, and the build it starts replays every epoch into the run cache."""

from __future__ import annotations

import tomllib
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from lightning.pytorch.loggers import CSVLogger

from reporter import expose_gates
from reporter.callbacks import GateReportCallback, toml_string
from reporter.config import load_config
from reporter.errors import WindowsFileError
from reporter.pipeline.training_log import read_metrics
from reporter.runstore import Run

pytestmark = pytest.mark.filterwarnings(
    "ignore:The '\\w+_dataloader' does not have many workers",  # a DataLoader in the test process is enough
    "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated",  # lightning 2.6 on torch 2.13
)
EPOCHS = 3


class TinyLSTM(pl.LightningModule):
    """Next-step prediction of 2 features with 4 LSTM units."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(2, 4, batch_first=True)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.lstm(x)[0])

    def training_step(self, batch, batch_index):
        (x,) = batch
        loss = torch.nn.functional.mse_loss(self(x[:, :-1]), x[:, 1:])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


class WeightsPerEpoch(pl.Callback):
    """The module's weights at the end of each training epoch, as the callback under test sees them."""

    def __init__(self):
        self.weights = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.weights[trainer.current_epoch] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def _windows(folder, count: int = 24, name: str = "windows.npz"):
    x = np.random.default_rng(0).standard_normal((count, 10, 2)).astype(np.float32)
    np.savez(folder / name, x=x)
    return folder / name


def _fit(folder, windows, epochs: int = EPOCHS, data=None, **options):
    """Train TinyLSTM on `data` (default: the windows) with the callback; return the callback, the
    weights per epoch and the logger."""
    torch.manual_seed(0)
    callback, recorder = GateReportCallback(windows, out_dir=folder / "report", **options), WeightsPerEpoch()
    logger = CSVLogger(folder / "logs")
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[recorder, callback],
    )
    x = torch.from_numpy(np.load(data or windows)["x"])
    trainer.fit(TinyLSTM(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=8))
    return callback, recorder.weights, logger


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three epochs with the callback, no replay."""
    folder = tmp_path_factory.mktemp("trained")
    windows = _windows(folder)
    callback, weights, logger = _fit(folder, windows, replay=False)
    return folder / "report", windows, weights, logger


def test_one_onnx_file_and_one_state_dict_per_epoch_of_that_epoch(trained):
    report, _, weights, _ = trained
    expected = {f"epoch={n}.{suffix}" for n in range(EPOCHS) for suffix in ("onnx", "pt")}
    assert {path.name for path in report.iterdir()} == expected | {"reporter.toml"}
    saved = [torch.load(report / f"epoch={n}.pt", weights_only=True) for n in range(EPOCHS)]
    for n, state in enumerate(saved):
        assert state.keys() == weights[n].keys()
        assert all(torch.equal(state[key], weights[n][key]) for key in state), n
    for before, after in zip(saved, saved[1:]):  # training happened between exports
        assert not torch.equal(before["lstm.weight_hh_l0"], after["lstm.weight_hh_l0"])


def test_each_onnx_file_replays_to_the_hidden_states_of_its_epoch(trained):
    report, windows, _, _ = trained
    x = np.load(windows)["x"]
    hidden = []
    for n in range(EPOCHS):
        exposed, layers = expose_gates(onnx.load(report / f"epoch={n}.onnx"))
        session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
        (layer,) = layers
        h = session.run([layer.outputs["h"]], {session.get_inputs()[0].name: x})[0]
        module = TinyLSTM()
        module.load_state_dict(torch.load(report / f"epoch={n}.pt", weights_only=True))
        with torch.no_grad():
            expected = module.lstm(torch.from_numpy(x))[0].numpy()
        assert h.shape == (24, 10, 1, 4)
        assert np.max(np.abs(h[:, :, 0] - expected)) <= 1e-5, n
        hidden.append(h)
    assert all(np.max(np.abs(a - b)) > 1e-3 for a, b in zip(hidden, hidden[1:]))


def test_the_config_it_writes_loads_as_a_series_with_the_training_metrics(trained):
    report, windows, _, logger = trained
    config = load_config(report / "reporter.toml")
    (series,) = config.series
    assert series.model == "TinyLSTM" and series.key == "epoch"
    assert series.versions == tuple(f"epoch={n}" for n in range(EPOCHS))
    assert [run.checkpoint.name for run in config.runs] == [f"epoch={n}.onnx" for n in range(EPOCHS)]
    assert all(run.windows.resolve() == windows.resolve() and run.factory is None for run in config.runs)
    assert series.metrics.resolve() == (Path(logger.log_dir) / "metrics.csv").resolve()
    metrics = read_metrics(series.metrics)
    assert set(metrics["epoch"][metrics["metric"] == "train_loss"]) == set(range(EPOCHS))
    assert config.output == report / "site"


def test_every_n_epochs_exports_epochs_zero_n_2n(tmp_path):
    _fit(tmp_path, _windows(tmp_path), every_n_epochs=2, replay=False)
    assert sorted(path.name for path in (tmp_path / "report").glob("epoch=*")) == [
        "epoch=0.onnx",
        "epoch=0.pt",
        "epoch=2.onnx",
        "epoch=2.pt",
    ]


def test_the_build_it_starts_replays_every_epoch_into_the_run_cache(tmp_path):
    replayed = _windows(tmp_path, count=4, name="replayed.npz")  # few windows: few pages to render
    callback, _, _ = _fit(tmp_path, replayed, data=_windows(tmp_path))
    report = tmp_path / "report"
    assert callback.last_exit_code == 0, (report / "build.log").read_text()
    runs = [Run.load(folder) for folder in sorted((report / "runs").iterdir())]
    assert sorted(run.meta["version"] for run in runs) == [f"epoch={n}" for n in range(EPOCHS)]
    assert (report / "site" / "index.html").is_file()


def test_a_failed_build_is_reported_with_the_end_of_its_log(tmp_path):
    data = _windows(tmp_path)
    windows = tmp_path / "three_features.npz"  # the model takes 2: export works from the example, replay cannot
    np.savez(windows, x=np.zeros((4, 10, 3), np.float32))
    example = np.zeros((1, 10, 2), np.float32)
    with pytest.warns(
        UserWarning, match=r"gate-report build failed \(exit code 2\).*build.log ends:\n.*three_features"
    ):
        callback, _, _ = _fit(tmp_path, windows, epochs=1, data=data, example=example)
    assert callback.last_exit_code == 2


def test_missing_windows_stop_the_fit_before_training(tmp_path):
    with pytest.raises(WindowsFileError, match="no such windows file"):
        _fit(tmp_path, tmp_path / "absent.npz", data=_windows(tmp_path), replay=False)
    assert not list(tmp_path.glob("report/epoch=*"))
    with pytest.raises(ValueError, match="every_n_epochs"):
        GateReportCallback(tmp_path / "w.npz", every_n_epochs=0)


@given(st.text(st.characters(max_codepoint=0x7F)) | st.text())  # ASCII often: its control characters and DEL
@example('C:\\runs\\"v1"\n\x00\x7f\t\u2028😀')
def test_a_toml_string_reads_back_as_the_same_text(text):
    assert tomllib.loads(f"key = {toml_string(text)}")["key"] == text
