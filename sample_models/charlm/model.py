"""A character-level language model: Embedding + 2-layer LSTM + linear read-out to the vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = [chr(c) for c in range(32, 127)] + ["\n", "\t", "\x00"]  # "\x00" stands for any other character
UNKNOWN = len(VOCAB) - 1


class CharLM(torch.nn.Module):
    """Token ids [batch, time] in, next-character logits [batch, time, vocab] out."""

    def __init__(self, vocab: int = len(VOCAB), embedding: int = 32, hidden: int = 128, layers: int = 2):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, embedding)
        self.rnn = torch.nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.embed(tokens))
        return self.head(y)


def build(vocab: int = len(VOCAB), embedding: int = 32, hidden: int = 128, layers: int = 2) -> CharLM:
    """The factory `reporter.toml` names: the shipped architecture by default."""
    return CharLM(vocab, embedding, hidden, layers)


def encode(text: str) -> list[int]:
    """Characters to ids; anything outside the vocabulary maps to UNKNOWN."""
    index = {ch: k for k, ch in enumerate(VOCAB)}
    return [index.get(ch, UNKNOWN) for ch in text]


def write_vocab(path: Path) -> None:
    """Save the vocabulary so users can decode windows without this module."""
    path.write_text(json.dumps(VOCAB, ensure_ascii=True) + "\n")
