"""A Lightning callback that makes a checkpoint series while a model trains, and its gate report.

    from reporter.callbacks import GateReportCallback
    trainer = pl.Trainer(logger=CSVLogger("logs"), callbacks=[GateReportCallback("holdout.npz")])

At the end of every `every_n_epochs`-th training epoch (the first one included) it exports the
module to `OUT/epoch=N.onnx` (with its weights in `OUT/epoch=N.pt`, to rebuild with a factory),
writes `OUT/reporter.toml` with one `[[series]]` of those checkpoints (and the CSVLogger's
metrics.csv), and starts `gate-report build` on it in a subprocess, so replay runs beside training
rather than in it. One build runs at a time: one that finds a build running leaves its epoch to the
next one (each build replays every checkpoint not yet in the run cache, `OUT/runs/`). When fitting
ends, a last build picks up what is left and the callback waits for it; a build's output goes to
`OUT/build.log`, and a failed one is reported with the end of that log.

Lightning is needed only here: `import reporter` never imports this module.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from reporter.atomic import write_bytes_atomic, write_text_atomic
from reporter.errors import WindowsFileError
from reporter.model.export import export_module
from reporter.model.module_inputs import INPUT_NAME, forward_arguments
from reporter.replay.window_readers import open_rows

__all__ = ["GateReportCallback"]

CONFIG_NAME, LOG_NAME = "reporter.toml", "build.log"
_WINDOWS_FORMATS = (".npy", ".npz", ".pt")  # formats whose windows need no cutting settings
_LOG_TAIL_LINES = 20


class GateReportCallback(pl.Callback):
    """Export the module after every `every_n_epochs`-th epoch and keep its gate report built.

    Args:
        windows: a windows file (.npy, .npz or .pt) to replay every checkpoint on; its first
            window is the export example unless `example` is given.
        every_n_epochs: export after epochs 0, n, 2n, …
        out_dir: the folder of the checkpoints, reporter.toml, the run cache and the site.
        model_name: the model's name in the report (default: the module's class name).
        example: the export example instead of the first window (an array, or a mapping of
            name → array for a forward that takes several tensors or one dict of them).
        replay: start `gate-report build` after each export and wait for the last one at the end.
    """

    def __init__(
        self,
        windows: str | os.PathLike,
        every_n_epochs: int = 1,
        out_dir: str | os.PathLike = "gate_report",
        model_name: str | None = None,
        example: np.ndarray | torch.Tensor | Mapping | None = None,
        replay: bool = True,
    ):
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a whole number of at least 1, got {every_n_epochs!r}")
        self.windows, self.out_dir = Path(windows).absolute(), Path(out_dir).absolute()
        self.every_n_epochs, self.model_name, self.example, self.replay = every_n_epochs, model_name, example, replay
        self._build: subprocess.Popen | None = None
        self.last_exit_code: int | None = None  # of the last build that ended
        self._metrics: Path | None = None  # the CSVLogger file the config names
        self._built: tuple = ()  # the inputs the last build started on (`_inputs`)

    @property
    def config_path(self) -> Path:
        return self.out_dir / CONFIG_NAME

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the windows before training starts, and warn of checkpoints left by another fit."""
        if stage != "fit" or not trainer.is_global_zero:
            return
        if not self.windows.is_file():
            raise WindowsFileError(f"{self.windows}: no such windows file")
        if self.windows.suffix.lower() not in _WINDOWS_FORMATS:
            raise WindowsFileError(f"{self.windows}: GateReportCallback reads windows from .npy, .npz or .pt")
        if self.example is None:
            self.example = _first_window(self.windows, pl_module)
        earlier = sorted(path.name for path in self.out_dir.glob("epoch=*.onnx"))
        if earlier:
            rank_zero_warn(
                f"{self.out_dir} already holds {', '.join(earlier)}: the report's series includes those this fit "
                "does not overwrite"
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if trainer.sanity_checking or not trainer.is_global_zero or epoch % self.every_n_epochs:
            return
        self._export(pl_module, epoch)
        self._write_config(trainer, pl_module)
        if self.replay and self._reap(wait=False):
            self._start_build()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refresh the config with the final metrics, build once more (unless nothing changed since the
        last build started) and wait for it."""
        if not trainer.is_global_zero or not any(self.out_dir.glob("epoch=*.onnx")):
            return
        self._write_config(trainer, pl_module)
        if self.replay:
            self._reap(wait=True)
            self._start_build()
            self._reap(wait=True)
            if self.last_exit_code == 0:
                rank_zero_info(f"Gate report built: {self.out_dir / 'site' / 'index.html'}")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._reap(wait=True)

    def _export(self, pl_module: pl.LightningModule, epoch: int) -> None:
        """Write epoch=N.pt (the state_dict), then epoch=N.onnx, each through a temporary file."""
        module = _on_cpu(pl_module)
        weights = io.BytesIO()
        torch.save({name: value.detach().cpu() for name, value in module.state_dict().items()}, weights)
        write_bytes_atomic(self.out_dir / f"epoch={epoch}.pt", weights.getvalue())
        as_dict = isinstance(self.example, Mapping) and len(forward_arguments(module)) == 1
        with torch.no_grad():  # export_module runs it in eval mode and hands it back in the mode it came
            exported = export_module(module, self.example, as_dict=as_dict)
        write_bytes_atomic(self.out_dir / f"epoch={epoch}.onnx", exported.model.SerializeToString())

    def _write_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """reporter.toml: the site and one [[series]] of every epoch=N.onnx here."""
        series = {
            "model": self.model_name or type(pl_module).__name__,
            "checkpoints": "epoch=*.onnx",
            "key": "epoch",
            "windows": _relative(self.windows, self.out_dir),
        }
        self._metrics = _csv_metrics(trainer)
        if self._metrics is not None:
            series["metrics"] = _relative(self._metrics, self.out_dir)
        site = {"title": f"{series['model']} over training", "output": "site"}
        text = toml_tables([("[site]", site), ("[[series]]", series)])
        if not self.config_path.is_file() or self.config_path.read_text(encoding="utf-8") != text:
            write_text_atomic(self.config_path, text)

    def _start_build(self) -> None:
        """`gate-report build` on the config in a subprocess, its output in build.log, unless the last
        build started on the same inputs."""
        inputs = self._inputs()
        if inputs == self._built:
            return
        command = [sys.executable, "-m", "reporter", "build", "--config", str(self.config_path)]
        with open(self.out_dir / LOG_NAME, "wb") as log:  # the child keeps its own descriptor
            self._build = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self._built = inputs
        try:  # training comes first; the build's threads inherit this from its main thread
            os.setpriority(os.PRIO_PROCESS, self._build.pid, 10)
        except (AttributeError, OSError):  # no setpriority (Windows), or the build already ended
            pass

    def _inputs(self) -> tuple:
        """What a build reads that changes while training, by name, size and time: the config, the
        checkpoints and the metrics."""
        files = [self.config_path, *self.out_dir.glob("epoch=*.onnx"), *([self._metrics] if self._metrics else [])]
        return tuple(sorted((str(path), path.stat().st_mtime_ns, path.stat().st_size) for path in files))

    def _reap(self, wait: bool) -> bool:
        """Whether no build is running (now, or after waiting); a failed one is reported."""
        if self._build is None:
            return True
        if wait and self._build.poll() is None:
            rank_zero_info(f"Waiting for the gate report build to finish (its log: {self.out_dir / LOG_NAME})")
        code = self._build.wait() if wait else self._build.poll()
        if code is None:
            return False
        self._build, self.last_exit_code = None, code
        if code != 0:
            log = self.out_dir / LOG_NAME
            rank_zero_warn(f"gate-report build failed (exit code {code}); {log} ends:\n{_tail(log)}")
        return True


def _first_window(windows: Path, module: torch.nn.Module) -> np.ndarray | dict[str, np.ndarray]:
    """The first window of a windows file: its "x" array, or one array per argument of a forward
    that takes several tensors (named after them, as replay feeds the exported model)."""
    arguments = forward_arguments(module)
    names = arguments if len(arguments) > 1 else [INPUT_NAME]
    rows = {name: open_rows(windows, name, None, None, None) for name in names}
    empty = [name for name, row in rows.items() if not row.shape or row.shape[0] == 0]
    if empty:
        raise WindowsFileError(f"{windows}: holds no windows to export the model with ({empty[0]!r} is empty)")
    first = {name: row.read(0, 1) for name, row in rows.items()}
    return first if len(arguments) > 1 else first[INPUT_NAME]


def toml_tables(tables: list[tuple[str, dict[str, str]]]) -> str:
    """TOML text of tables of string values: `[("[site]", {"title": "…"}), ("[[series]]", {…})]`."""
    lines = []
    for header, table in tables:
        lines += [header, *(f"{key} = {toml_string(value)}" for key, value in table.items()), ""]
    return "\n".join(lines)


def toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, but for DEL, which TOML also wants escaped."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _relative(path: Path, folder: Path) -> str:
    """`path` relative to `folder` (the config's paths are), or absolute on another drive."""
    try:
        return Path(os.path.relpath(path, folder)).as_posix()
    except ValueError:
        return str(path)


def _csv_metrics(trainer: pl.Trainer) -> Path | None:
    """The first CSVLogger's metrics.csv, flushed to disk now; None when there is none (yet)."""
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            logger.save()
            path = Path(logger.log_dir) / "metrics.csv"
            return path.absolute() if path.is_file() else None
    return None


def _tail(log: Path) -> str:
    """The last lines of a build's log."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read it: {exc.strerror or exc})"
    return "\n".join(lines[-_LOG_TAIL_LINES:])


def _on_cpu(module: pl.LightningModule) -> pl.LightningModule:
    """The module itself when it is on the CPU, else a CPU copy (export feeds CPU tensors; moving
    the training module would disturb its optimizer and its distributed wrapper)."""
    tensors = [*module.parameters(), *module.buffers()]
    if all(tensor.device.type == "cpu" for tensor in tensors):
        return module
    return copy.deepcopy(module).cpu()  # a LightningModule leaves its trainer out of copies
