"""Write and read a run directory: everything one replay learned, in files the site and diff read.

    RUN_DIR/
      run.json               schema_version, identity, provenance hashes, settings, throughput
      layers.json            the layer manifest (`reporter.layers.layers_to_json`)
      gate_stats.parquet     one row per layer × direction × gate × unit (`reporter.replay.stats`)
      timestep_stats.parquet one row per layer × gate × timestep
      window_scores.parquet  one row per window: window, anomaly_score, rank, the features behind it
      explanations.parquet   per sampled window: where each layer × gate strays from the typical window
      impulse.parquet        impulse-response curves (`reporter.replay.impulse`)
      traces.npz             full traces of the sampled windows: `window`, `reason`, `x`,
                             `LAYER/GATE` [K, T, D, H] and `output:NAME`
      outputs.npz            each model output's last step, per window (for output drift in diffs)
      timings.json           the replay's measured speed: the one file two replays of the same
                             inputs write differently (so it is kept out of run.json and the pages)
      unit_extremes.parquet  per unit of h: the windows where it is most on and off, step, context
      unit_hypotheses.parquet per unit: the habits that explain it (`reporter.replay.unit_tracks`)
      weights.parquet        fused layers' weights per gate block: norms, spectra (`reporter.model.weights`)
      weight_maps.npz        those weight matrices binned for heatmaps
      weight_blocks.npz      the same blocks whole (small models only), for a series' weight updates
      gradient_flow.parquet  ‖∂h_T/∂h_t‖ and ‖∂h_T/∂x_t‖ by lag per layer (`reporter.replay.gradient_flow`)
      unit_gradients.parquet per unit: the lag at which its influence on the final state halves
      output_gradient.parquet ‖∂y_T/∂x_t‖ of the model's output by lag (torch checkpoints only)
      vocab.json             token models replayed with --vocab: id → the text it prints, a JSON list

A run is written into a hidden sibling folder and renamed into place (`reporter.atomic`), so a
failed or interrupted replay leaves the previous run intact. Files are written deterministically
(no timestamps inside the zip archives, fixed parquet settings): a run loaded and saved again is
byte-identical, and two replays of the same inputs (with SOURCE_DATE_EPOCH set) differ only in
timings.json.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from reporter.atomic import staging_dir
from reporter.errors import RunError
from reporter.layers import Layer, layers_from_json, layers_to_json
from reporter.replay.gradient_summary import GRADIENT_COLUMNS, UNIT_GRADIENT_COLUMNS
from reporter.replay.stats import GATE_STATS_COLUMNS, TIMESTEP_STATS_COLUMNS
from reporter.replay.unit_tracks import EXTREMES_COLUMNS, HYPOTHESES_COLUMNS

__all__ = ["ARRAYS", "LATER_ARRAYS", "LATER_TABLES", "Run", "SCHEMA_VERSION", "TABLES"]

SCHEMA_VERSION = 1
TABLES = ("gate_stats", "timestep_stats", "window_scores", "explanations", "impulse")
ARRAYS = ("traces", "outputs")
LATER_TABLES = (
    "unit_extremes",
    "unit_hypotheses",
    "weights",
    "gradient_flow",
    "unit_gradients",
    "output_gradient",
)  # absent in runs made before they were kept
LATER_ARRAYS = ("weight_maps", "weight_blocks")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold: no build time leaks in
_REQUIRED_COLUMNS = {
    "gate_stats": GATE_STATS_COLUMNS,
    "timestep_stats": TIMESTEP_STATS_COLUMNS,
    "window_scores": ("window", "anomaly_score", "rank"),
    "impulse": ("target", "lag", "response"),
}
_LATER_COLUMNS = {
    "unit_extremes": EXTREMES_COLUMNS,
    "unit_hypotheses": HYPOTHESES_COLUMNS,
    "weights": ("layer", "direction", "gate", "matrix", "frobenius", "spectral_radius", "sigma_max"),  # what pages read
    "gradient_flow": GRADIENT_COLUMNS,
    "unit_gradients": UNIT_GRADIENT_COLUMNS,
    "output_gradient": ("output", "lag", "norm", "low", "high"),
}


@dataclass
class Run:
    """One replay's results, as the site, `diff` and `check` read them."""

    meta: dict
    layers: list[Layer]
    gate_stats: pd.DataFrame
    timestep_stats: pd.DataFrame
    window_scores: pd.DataFrame
    explanations: pd.DataFrame
    impulse: pd.DataFrame
    traces: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None
    timings: dict = field(default_factory=dict)  # measured, so different in every replay: timings.json
    vocab: list[str] | None = None  # token id -> text (`reporter.vocab`), so pages show text: vocab.json
    unit_extremes: pd.DataFrame = field(default_factory=pd.DataFrame)  # `replay.unit_tracks`
    unit_hypotheses: pd.DataFrame = field(default_factory=pd.DataFrame)
    weights: pd.DataFrame = field(default_factory=pd.DataFrame)  # `model.weights`, fused layers only
    weight_maps: dict[str, np.ndarray] = field(default_factory=dict)  # binned weight matrices, for heatmaps
    weight_blocks: dict[str, np.ndarray] = field(default_factory=dict)  # whole, ≤ `model.weights.KEPT_VALUES`
    gradient_flow: pd.DataFrame = field(default_factory=pd.DataFrame)  # `replay.gradient_flow`, fused layers only
    unit_gradients: pd.DataFrame = field(default_factory=pd.DataFrame)
    output_gradient: pd.DataFrame = field(default_factory=pd.DataFrame)  # `model.output_gradient`, torch only

    @property
    def name(self) -> str:
        """ "model version", how pages and messages name the run."""
        return f"{self.meta['model']} {self.meta['version']}"

    def save(self, path: Path) -> Path:
        """Write the run directory atomically; return its path."""
        path = Path(path)
        with staging_dir(path) as staging:
            (staging / "run.json").write_text(_json(self.meta), encoding="utf-8")
            (staging / "layers.json").write_text(layers_to_json(self.layers), encoding="utf-8")
            for table in TABLES:
                _write_parquet(getattr(self, table), staging / f"{table}.parquet")
            for table in LATER_TABLES:
                _write_parquet(getattr(self, table), staging / f"{table}.parquet")
            for arrays in (*ARRAYS, *LATER_ARRAYS):
                _write_npz(getattr(self, arrays), staging / f"{arrays}.npz")
            if self.timings:
                (staging / "timings.json").write_text(_json(self.timings), encoding="utf-8")
            if self.vocab is not None:
                (staging / "vocab.json").write_text(_json(self.vocab), encoding="utf-8")
        self.path = path
        return path

    @classmethod
    def load(cls, path: Path) -> Run:
        """Read a run directory, refusing one that is incomplete or from a newer schema."""
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path}: not a run directory (run `gate-report replay … -o {path}` first)")
        meta = _read_meta(path / "run.json")
        try:
            layers = layers_from_json((path / "layers.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunError(f"{path / 'layers.json'}: unreadable layer manifest ({exc})") from None
        tables = {table: _read_parquet(path / f"{table}.parquet") for table in TABLES}
        for table, required in _REQUIRED_COLUMNS.items():
            missing = [column for column in required if column not in tables[table].columns]
            if missing and not (table == "impulse" and tables[table].empty):
                raise RunError(f"{path / (table + '.parquet')}: lacks the columns {', '.join(missing)}")
        if not tables["window_scores"][["window", "anomaly_score", "rank"]].apply(pd.api.types.is_numeric_dtype).all():
            raise RunError(f"{path / 'window_scores.parquet'}: window, anomaly_score and rank must be numbers")
        arrays = {name: _read_npz(path / f"{name}.npz") for name in ARRAYS}
        arrays |= {name: _read_npz(path / f"{name}.npz") for name in LATER_ARRAYS if (path / f"{name}.npz").exists()}
        units = {
            table: _read_parquet(path / f"{table}.parquet")
            for table in LATER_TABLES
            if (path / f"{table}.parquet").exists()
        }
        for table, frame in units.items():
            missing = [column for column in _LATER_COLUMNS[table] if column not in frame.columns]
            if missing and len(frame):
                raise RunError(f"{path / (table + '.parquet')}: lacks the columns {', '.join(missing)}")
        timings, vocab = _read_timings(path / "timings.json"), _read_vocab(path / "vocab.json")
        return cls(meta, layers, **tables, **arrays, **units, path=path, timings=timings, vocab=vocab)


def _read_vocab(path: Path) -> list[str] | None:
    """vocab.json: the run's token vocabulary, a JSON list of strings (absent for float models)."""
    if not path.exists():
        return None
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: unreadable vocabulary ({exc})") from None
    if not isinstance(vocab, list) or not all(isinstance(token, str) for token in vocab):
        raise RunError(f"{path}: a run's vocabulary is a JSON list of strings")
    return vocab


def _read_timings(path: Path) -> dict:
    """timings.json: the replay's measured speed (absent in runs made before it had its own file)."""
    if not path.exists():
        return {}
    try:
        timings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: unreadable timings ({exc})") from None
    if not isinstance(timings, dict):
        raise RunError(f"{path}: timings must be a JSON object")
    return timings


def _json(value: dict) -> str:
    """Stable JSON: sorted keys, two-space indent, a final newline."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=True) + "\n"


def _read_meta(path: Path) -> dict:
    """run.json, checked for the schema this code reads."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: unreadable run metadata ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("schema_version"), int):
        raise RunError(f"{path}: no schema_version; not a Gate Reporter run")
    if meta["schema_version"] > SCHEMA_VERSION:
        raise RunError(
            f"{path}: schema_version {meta['schema_version']} is newer than this Gate Reporter reads "
            f"({SCHEMA_VERSION}); upgrade gate-reporter"
        )
    missing = [key for key in ("model", "version", "n_windows") if key not in meta]
    if missing:
        raise RunError(f"{path}: missing {', '.join(missing)}")
    if not (isinstance(meta["model"], str) and isinstance(meta["version"], str) and meta["model"] and meta["version"]):
        raise RunError(f"{path}: model and version must be non-empty strings")
    if not isinstance(meta["n_windows"], int) or isinstance(meta["n_windows"], bool) or meta["n_windows"] < 0:
        raise RunError(f"{path}: n_windows must be a whole number ≥ 0")
    return meta


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """A table with fixed writer settings (no statistics that vary, no index column)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, compression="zstd", write_statistics=False, store_schema=True)


def _read_parquet(path: Path) -> pd.DataFrame:
    """A run table; a missing or corrupt one is a RunError naming the file."""
    try:
        return pq.read_table(path).to_pandas()
    except Exception as exc:  # noqa: BLE001 - a damaged file makes the parser raise anything; report it, never crash
        raise RunError(
            f"{path}: unreadable table ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def _write_npz(arrays: dict[str, np.ndarray], path: Path) -> None:
    """An .npz numpy can read, with sorted members and no timestamps (byte-identical rewrites)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz into memory (they are small: sampled traces, last-step outputs)."""
    try:
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as archive:  # our handle: closed on any error
            return {name: archive[name] for name in archive.files}
    except Exception as exc:  # noqa: BLE001 - zlib, zipfile and numpy raise many types on damaged files
        raise RunError(
            f"{path}: unreadable arrays ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
