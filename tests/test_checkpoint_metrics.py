"""A series of Lightning checkpoints without a metrics.csv still has its training curve: the metric
each checkpoint was saved on, read without running code, equal to what the trainer logged."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from reporter.model.checkpoint_metrics import checkpoint_metrics

pl = pytest.importorskip("lightning.pytorch")


class TinyForecaster(pl.LightningModule):
    def __init__(self, hidden: int = 4):
        super().__init__()
        self.save_hyperparameters()
        self.rnn = torch.nn.LSTM(2, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])

    def _loss(self, batch):
        return torch.nn.functional.mse_loss(self(batch[0][:, :-1]), batch[0][:, 1:])

    def training_step(self, batch, _):
        return self._loss(batch)

    def validation_step(self, batch, _):
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


def test_each_checkpoint_gives_the_metric_it_was_saved_on(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.from_numpy(np.random.default_rng(0).standard_normal((32, 12, 2))).float()
    )
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=-1)
    logged = []

    class Record(pl.Callback):
        def on_validation_end(self, trainer, module):
            if not trainer.sanity_checking:
                logged.append((trainer.current_epoch, trainer.global_step, float(trainer.callback_metrics["val_loss"])))

    trainer = pl.Trainer(
        max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[saver, Record()]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on dataloader workers and the like
        trainer.fit(TinyForecaster(), loader, loader)
    paths = sorted(tmp_path.glob("*.ckpt"))
    assert len(paths) == 3
    frame = checkpoint_metrics(paths + [tmp_path / "missing.ckpt"])
    assert frame["metric"].tolist() == ["val_loss"] * 3
    assert list(zip(frame["epoch"], frame["step"])) == [(epoch, step) for epoch, step, _ in logged]
    np.testing.assert_allclose(frame["value"], [value for _, _, value in logged], rtol=1e-6)


def test_files_that_monitor_nothing_give_no_rows(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 1}, tmp_path / "plain.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    frame = checkpoint_metrics([tmp_path / "plain.ckpt", tmp_path / "garbage.ckpt"])
    assert frame.empty and list(frame.columns) == ["metric", "epoch", "step", "value"]
