"""The forecaster: a 2-layer LSTM that predicts, at every step, the next step's sensor readings.

Input  x: float32 [batch, time, 3], the normalised sensor channels (time = 64 in the windows).
Output  : float32 [batch, time, 3], where output[:, t] is the forecast of x[:, t + 1].

Per-step prediction (rather than one forecast from the last hidden state) gives a training signal
at every step, so the short v1 training still learns something, and a window's forecast errors
line up step by step with the gate traces the report shows. Both shipped versions share this
architecture; they differ only in the forget-gate bias at initialisation and in training length
(see `train.py`), which is the change the sample site's version comparison is meant to reveal.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Forecaster", "build", "set_forget_bias"]


class Forecaster(nn.Module):
    """LSTM(features -> hidden, layers, batch_first) followed by a per-step Linear(hidden -> features)."""

    def __init__(self, features: int = 3, hidden: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y)


def set_forget_bias(model: Forecaster, value: float) -> None:
    """Set every layer's forget-gate bias so that bias_ih + bias_hh == value.

    torch's LSTM keeps two biases per layer and orders the gates (i, f, g, o), so the forget
    chunk is [H:2H] of each: bias_ih's chunk gets `value`, bias_hh's chunk 0. value = 0 starts
    the cells with no preference to remember (sigmoid(0) = 0.5); value = 1 is the usual advice
    (Jozefowicz et al. 2015) that starts them remembering (sigmoid(1) = 0.73).
    """
    rnn, h = model.rnn, model.rnn.hidden_size
    with torch.no_grad():
        for k in range(rnn.num_layers):
            getattr(rnn, f"bias_ih_l{k}")[h : 2 * h].fill_(value)
            getattr(rnn, f"bias_hh_l{k}")[h : 2 * h].fill_(0.0)


def build(features: int = 3, hidden: int = 32, layers: int = 2) -> Forecaster:
    """The factory `reporter.toml` names: the shipped architecture by default (untrained)."""
    return Forecaster(features, hidden, layers)
