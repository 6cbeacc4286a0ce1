"""Train forecaster v1 and v2 and write their checkpoints and the stored windows.

    python -m sample_models.forecaster.train

Deterministic: seeded generators, deterministic algorithms, 2 threads. v1 starts with forget-gate
bias 0 and trains briefly; v2 starts with forget-gate bias 1 and trains longer, so comparing them
shows a real change in memory behaviour. The held-out windows carry injected anomalies (~5%).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sample_models.forecaster.model import build, set_forget_bias

HERE = Path(__file__).resolve().parent
STEPS, WINDOW, FEATURES = 60_000, 64, 3
ANOMALY_KINDS = ("spike", "level_shift", "flatline", "frequency_change", "noise_burst")


def sensor_series(rng: np.random.Generator, steps: int = STEPS) -> np.ndarray:
    """Trend + daily/weekly seasonality + noise, with regime changes in level and volatility."""
    t = np.arange(steps, dtype=np.float64)
    series = np.empty((steps, FEATURES))
    regimes = np.repeat(rng.integers(0, 3, size=steps // 2000 + 1), 2000)[:steps]
    level = np.array([0.0, 1.5, -1.0])[regimes]
    volatility = np.array([0.15, 0.35, 0.25])[regimes]
    for k in range(FEATURES):
        phase = rng.uniform(0, 2 * np.pi)
        series[:, k] = (
            0.00002 * (k + 1) * t
            + np.sin(2 * np.pi * t / 24 + phase) * (1.0 + 0.3 * k)
            + 0.5 * np.sin(2 * np.pi * t / 168 + phase)
            + level * (1 - 0.3 * k)
            + volatility * rng.standard_normal(steps)
        )
    return series


def windows_from(series: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cut [N, WINDOW, FEATURES] windows at the given start indices."""
    return np.stack([series[s : s + WINDOW] for s in starts]).astype(np.float32)


def inject(window: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Return a copy of one window with a clearly visible anomaly of the given kind."""
    w = window.copy()
    start = int(rng.integers(16, WINDOW - 16))
    channel = int(rng.integers(0, FEATURES))
    if kind == "spike":
        w[start : start + 2, channel] += rng.choice([-1, 1]) * 8.0
    elif kind == "level_shift":
        w[start:, channel] += rng.choice([-1, 1]) * 5.0
    elif kind == "flatline":
        w[start:, :] = w[start, :]
    elif kind == "frequency_change":
        t = np.arange(WINDOW - start)
        w[start:, channel] = w[start:, channel].mean() + 2.5 * np.sin(2 * np.pi * t / 4)
    elif kind == "noise_burst":
        w[start : start + 20, :] += 2.5 * rng.standard_normal((min(20, WINDOW - start), FEATURES))
    return w


def train(model, x: np.ndarray, epochs: int, seed: int) -> list[float]:
    """Next-step MSE training with Adam; returns the loss per epoch."""
    torch.manual_seed(seed)
    data = torch.from_numpy(x)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        total = 0.0
        for batch in data[order].split(128):
            prediction = model(batch[:, :-1])
            loss = torch.nn.functional.mse_loss(prediction, batch[:, 1:])
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(data))
        print(f"  epoch {epoch + 1}/{epochs}: train MSE {losses[-1]:.4f}", flush=True)
    return losses


def mean_forget_gate(model, x: np.ndarray) -> float:
    """Mean forget-gate activation over all layers, units and steps, from the cell equations."""
    rnn, total, count = model.rnn, 0.0, 0
    with torch.no_grad():
        layer_input = torch.from_numpy(x)
        for layer in range(rnn.num_layers):
            w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
            bias = getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")
            h = torch.zeros(len(x), rnn.hidden_size)
            c = torch.zeros_like(h)
            outputs = []
            for t in range(layer_input.shape[1]):
                i, f, g, o = (layer_input[:, t] @ w_ih.T + h @ w_hh.T + bias).chunk(4, dim=1)
                f = torch.sigmoid(f)
                c = f * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                total, count = total + float(f.sum()), count + f.numel()
                outputs.append(h)
            layer_input = torch.stack(outputs, dim=1)
    return total / count


def main() -> None:
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(20261124)
    series = sensor_series(rng)
    split = int(0.7 * STEPS)
    mean, std = series[:split].mean(axis=0), series[:split].std(axis=0)
    series = (series - mean) / std
    train_x = windows_from(series, np.arange(0, split - WINDOW, 8))
    held_out = windows_from(series, np.linspace(split, STEPS - WINDOW, 2000).astype(int))

    labels = np.zeros(len(held_out), np.int8)
    kinds = np.full(len(held_out), "normal", dtype="<U16")
    anomalous = rng.choice(len(held_out), size=len(held_out) // 20, replace=False)
    for n, index in enumerate(sorted(anomalous)):
        kind = ANOMALY_KINDS[n % len(ANOMALY_KINDS)]
        held_out[index] = inject(held_out[index], kind, rng)
        labels[index], kinds[index] = 1, kind
    np.savez_compressed(HERE / "windows.npz", x=held_out, label=labels, kind=kinds)

    for version, forget_bias, epochs in (("v1", 0.0, 2), ("v2", 1.0, 8)):
        print(f"forecaster {version}: forget-gate bias {forget_bias}, {epochs} epochs", flush=True)
        torch.manual_seed(7)
        model = build()
        set_forget_bias(model, forget_bias)
        train(model, train_x, epochs, seed=7)
        model.eval()
        normal = held_out[labels == 0]
        with torch.no_grad():
            mse = float(
                torch.nn.functional.mse_loss(model(torch.from_numpy(normal[:, :-1])), torch.from_numpy(normal[:, 1:]))
            )
        print(
            f"  held-out MSE (normal windows) {mse:.4f}; mean forget gate {mean_forget_gate(model, normal[:256]):.3f}"
        )
        torch.save(model.state_dict(), HERE / f"{version}.pt")


if __name__ == "__main__":
    main()
