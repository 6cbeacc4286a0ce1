"""A bidirectional GRU that classifies 6-channel motion-sensor windows into activities."""

from __future__ import annotations

import torch

CLASSES = ("idle", "walking", "running")


class SensorGRU(torch.nn.Module):
    """Bidirectional GRU over [batch, time, channels]; classifies from the mean of both directions' states."""

    def __init__(self, channels: int = 6, hidden: int = 32, classes: int = len(CLASSES)):
        super().__init__()
        self.rnn = torch.nn.GRU(channels, hidden, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y.mean(dim=1))


def build(channels: int = 6, hidden: int = 32, classes: int = len(CLASSES)) -> SensorGRU:
    """The factory `reporter.toml` names: the shipped architecture by default."""
    return SensorGRU(channels, hidden, classes)
