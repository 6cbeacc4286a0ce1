"""Training logs: a metrics.csv written by Lightning's own CSVLogger reads back to exactly the values
logged, one row per value; a file that is not one is a one-line RunError naming it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lightning.pytorch.loggers import CSVLogger

from reporter.errors import RunError
from reporter.pipeline.training_log import METRICS_COLUMNS, read_metrics


def _logged(tmp_path, calls: list[tuple[int, dict]], flush_after: int | None = None):
    """Log each (step, metrics) through a CSVLogger, as a Trainer would, and return its metrics.csv."""
    logger = CSVLogger(tmp_path, name="logs", version=0)
    for k, (step, metrics) in enumerate(calls):
        logger.log_metrics(metrics, step=step)
        if k == flush_after:
            logger.save()  # a later call adds a column: the logger rewrites the file with a new header
    logger.finalize("success")
    return tmp_path / "logs" / "version_0" / "metrics.csv"


def test_a_csvlogger_file_reads_back_to_exactly_the_values_logged(tmp_path):
    rng = np.random.default_rng(0)
    loss = [float(v) for v in rng.uniform(0, 2, size=6)]
    calls = [
        (0, {"epoch": 0, "train_loss": loss[0]}),
        (1, {"epoch": 0, "train_loss": loss[1]}),
        (1, {"epoch": 0, "val_loss": loss[2], "val_acc": 0.25}),
        (2, {"epoch": 1, "train_loss": loss[3]}),
        (3, {"epoch": 1, "train_loss": loss[4], "lr": 1e-3}),
        (3, {"epoch": 1, "val_loss": loss[5], "val_acc": 0.5}),
    ]
    frame = read_metrics(_logged(tmp_path, calls, flush_after=1))
    expected = sorted(
        (
            (name, metrics["epoch"], step, value)
            for step, metrics in calls
            for name, value in metrics.items()
            if name != "epoch"
        ),
        key=lambda row: (row[0], row[2]),
    )
    assert list(frame.columns) == list(METRICS_COLUMNS)
    assert list(frame.itertuples(index=False, name=None)) == expected
    assert pd.api.types.is_string_dtype(frame["metric"])
    assert [str(frame[name].dtype) for name in ("epoch", "step", "value")] == ["int64", "int64", "float64"]


def test_a_file_without_epochs_has_epoch_minus_one_and_ignores_text_columns(tmp_path):
    path = _logged(tmp_path, [(0, {"loss": 1.5, "note": "warmup"}), (5, {"loss": 0.75, "note": "steady"})])
    frame = read_metrics(path)
    assert frame.to_dict("list") == {
        "metric": ["loss", "loss"],
        "epoch": [-1, -1],
        "step": [0, 5],
        "value": [1.5, 0.75],
    }
    (tmp_path / "no_step.csv").write_text("loss,acc\n0.5,\n,0.25\n", encoding="utf-8")
    rows = read_metrics(tmp_path / "no_step.csv").itertuples(index=False, name=None)
    assert list(rows) == [("acc", -1, -1, 0.25), ("loss", -1, -1, 0.5)]


def test_a_header_alone_is_no_values_with_the_columns_and_dtypes(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step,train_loss\n", encoding="utf-8")
    frame = read_metrics(tmp_path / "metrics.csv")
    assert frame.empty and list(frame.columns) == list(METRICS_COLUMNS)
    assert [str(frame[name].dtype) for name in ("epoch", "step", "value")] == ["int64", "int64", "float64"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "no such metrics file"),
        ("", "is empty"),
        ("epoch,step,loss\n0,0,0.5,7\n", "more fields than the header"),
        ("epoch,step,loss\n0,0,0.5\n0,1,0.4,7\n", "not a metrics CSV"),
        ('epoch,step,loss\n0,0,"0.5\n', "not a metrics CSV"),
        ("epoch,step,loss\nfirst,0,0.5\n", "epoch 'first' on row 2 is not a whole number"),
        ("epoch,step,loss\n0,1.5,0.5\n", "step '1.5' on row 2 is not a whole number"),
    ],
)
def test_a_malformed_file_is_a_one_line_error_naming_it(tmp_path, text, problem):
    path = tmp_path / "metrics.csv"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(RunError) as caught:
        read_metrics(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message


def test_a_folder_or_binary_file_is_a_run_error(tmp_path):
    with pytest.raises(RunError, match="cannot read the metrics file"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.csv").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(RunError, match="metrics.csv: not a metrics CSV"):
        read_metrics(tmp_path / "metrics.csv")
