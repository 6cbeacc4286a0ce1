"""Train the forecaster checkpoint series behind the sample site's series and sweep pages (issue 16).

    python -m sample_models.forecaster.train_series

Writes `epochs/epoch=N.pt` (N = 0..7, counted from 0 as Lightning names them and as metrics.csv
logs them: v2's recipe, forget-gate bias 1, saved after each epoch) with
`epochs/metrics.csv` in Lightning CSVLogger's format, and `sweep/forget_bias=B.pt` (B = 0, 0.5, 1,
1.5, 2: the same seed, 3 epochs each). Uses train.py's data, model and training loop with the same
seeds, so the runs are deterministic and `epoch=7.pt` holds the same weights as v2.pt. Reads the
stored held-out windows (`windows.npz`, never rewritten) for the validation loss.
"""

from __future__ import annotations

import csv

import numpy as np
import torch

from sample_models.forecaster.model import build, set_forget_bias
from sample_models.forecaster.train import HERE, STEPS, WINDOW, sensor_series, train, windows_from

SEED, LOG_EVERY_N_STEPS = 7, 20
FORGET_BIASES = (0.0, 0.5, 1.0, 1.5, 2.0)


def training_windows() -> np.ndarray:
    """The training windows of train.py's `main`: same generator, normalisation and split."""
    series = sensor_series(np.random.default_rng(20261124))
    split = int(0.7 * STEPS)
    series = (series - series[:split].mean(axis=0)) / series[:split].std(axis=0)
    return windows_from(series, np.arange(0, split - WINDOW, 8))


def held_out_mse(model, x: np.ndarray) -> float:
    """Next-step MSE over windows x, as train.py reports it."""
    with torch.no_grad():
        data = torch.from_numpy(x)
        return float(torch.nn.functional.mse_loss(model(data[:, :-1]), data[:, 1:]))


def train_epochs(model, x: np.ndarray, normal: np.ndarray, epochs: int) -> list[dict]:
    """train.py's `train` loop, saving a checkpoint per epoch and returning CSVLogger-style rows.

    As Lightning logs them: `step` is the 0-based global step, train_loss every LOG_EVERY_N_STEPS
    steps, val_loss at each epoch's last step.
    """
    torch.manual_seed(SEED)
    data = torch.from_numpy(x)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(SEED)
    rows, step = [], 0
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for batch in data[order].split(128):
            loss = torch.nn.functional.mse_loss(model(batch[:, :-1]), batch[:, 1:])
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            if (step + 1) % LOG_EVERY_N_STEPS == 0:
                rows.append({"epoch": epoch, "step": step, "train_loss": float(loss.detach())})
            step += 1
        rows.append({"epoch": epoch, "step": step - 1, "val_loss": held_out_mse(model, normal)})
        torch.save(model.state_dict(), HERE / "epochs" / f"epoch={epoch}.pt")
        print(f"  epoch {epoch + 1}/{epochs}: held-out MSE {rows[-1]['val_loss']:.4f}", flush=True)
    return rows


def main() -> None:
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    train_x = training_windows()
    with np.load(HERE / "windows.npz") as stored:
        normal = stored["x"][stored["label"] == 0]
    (HERE / "epochs").mkdir(exist_ok=True)
    (HERE / "sweep").mkdir(exist_ok=True)

    print("forecaster epoch series: forget-gate bias 1.0, 8 epochs", flush=True)
    torch.manual_seed(SEED)
    model = build()
    set_forget_bias(model, 1.0)
    rows = train_epochs(model, train_x, normal, epochs=8)
    with open(HERE / "epochs" / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=sorted(set().union(*rows)))
        writer.writeheader()
        writer.writerows(rows)

    for bias in FORGET_BIASES:
        print(f"forecaster sweep: forget-gate bias {bias:g}, 3 epochs", flush=True)
        torch.manual_seed(SEED)
        model = build()
        set_forget_bias(model, bias)
        train(model, train_x, 3, seed=SEED)
        print(f"  held-out MSE {held_out_mse(model, normal):.4f}", flush=True)
        torch.save(model.state_dict(), HERE / "sweep" / f"forget_bias={bias:g}.pt")


if __name__ == "__main__":
    main()
