"""Tiny models with factories, importable as "tests.tiny_models:NAME" by the CLI under test."""

from __future__ import annotations

import torch


class TinyForecaster(torch.nn.Module):
    """2-layer LSTM + linear head on [B, T, F] windows."""

    def __init__(self, features: int = 3, hidden: int = 6):
        super().__init__()
        self.rnn = torch.nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(hidden, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y)


def tiny_forecaster(features: int = 3, hidden: int = 6) -> TinyForecaster:
    """Factory used in tests; seeded so every call gives the same weights."""
    torch.manual_seed(0)
    return TinyForecaster(features, hidden).eval()


def save_tiny(tmp_path, features: int = 3, hidden: int = 6):
    """Write a state_dict checkpoint and matching windows; return (checkpoint, windows) paths."""
    import numpy as np

    checkpoint = tmp_path / "tiny.pt"
    torch.save(tiny_forecaster(features, hidden).state_dict(), checkpoint)
    windows = tmp_path / "windows.npz"
    rng = np.random.default_rng(1)
    np.savez(windows, x=rng.standard_normal((10, 7, features)).astype(np.float32))
    return checkpoint, windows


class TinyCharLM(torch.nn.Module):
    """Embedding + LSTM + linear head on [B, T] token ids."""

    def __init__(self, vocab: int = 20, hidden: int = 5):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 4)
        self.rnn = torch.nn.LSTM(4, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.embed(ids))
        return self.head(y)


def tiny_charlm(vocab: int = 20, hidden: int = 5) -> TinyCharLM:
    """Factory for a token model; seeded."""
    torch.manual_seed(0)
    return TinyCharLM(vocab, hidden).eval()


class TinyWithState(torch.nn.Module):
    """A model that returns its final hidden state [layers, B, H] beside the per-step output."""

    def __init__(self, features: int = 3, hidden: int = 4):
        super().__init__()
        self.rnn = torch.nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(hidden, features)

    def forward(self, x: torch.Tensor):
        y, (h, _) = self.rnn(x)
        return self.head(y), h


def tiny_with_state(features: int = 3, hidden: int = 4) -> TinyWithState:
    """Factory; seeded."""
    torch.manual_seed(0)
    return TinyWithState(features, hidden).eval()


class TinyMixed(torch.nn.Module):
    """A one-direction LSTM under a bidirectional GRU: gates of both shapes in one model."""

    def __init__(self, features: int = 3, hidden: int = 5):
        super().__init__()
        self.lstm = torch.nn.LSTM(features, hidden, batch_first=True)
        self.gru = torch.nn.GRU(hidden, 4, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(8, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        z, _ = self.gru(y)
        return self.head(z)


def tiny_mixed(features: int = 3, hidden: int = 5) -> TinyMixed:
    """Factory; seeded."""
    torch.manual_seed(0)
    return TinyMixed(features, hidden).eval()
