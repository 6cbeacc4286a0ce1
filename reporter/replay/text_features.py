"""What a token window's text is doing at every step: the facts a unit might track.

Karpathy, Johnson & Fei-Fei (2015) found character-model cells that are on inside quotes, that
count the position in a line, that follow indentation. To test a unit for such a habit, every
step of every window needs those facts, read from the decoded text:

    quotes         inside a string quote ('…' or "…"; an apostrophe inside "…" or after a
                   letter, as in it's, opens nothing)
    brackets       inside a bracket ( [ { opened within the window
    line_position  characters since the last newline
    indentation    leading spaces and tabs of the current line

The state after step t's token is the fact at t (a cell's value at t has read tokens ≤ t). A
window starts with no history: outside quotes and brackets, at the start of a line. Tokens of
several characters (BPE) count by their characters, summarised per vocabulary entry once, so a
batch costs one vectorised update per step over its windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BINARY", "CONTINUOUS", "TokenProps", "step_features"]

BINARY = ("quotes", "brackets")  # features that hold or not at a step
CONTINUOUS = ("line_position", "indentation")  # features with a size
_OPEN, _CLOSE, _SPACE = "([{", ")]}", " \t"


def _leading_space(text: str) -> int:
    return len(text) - len(text.lstrip(_SPACE))


def _quote_step(state: int, char: str) -> int:
    """One character through the quote reader. State = 2 × quote + (last character alphanumeric),
    quote 0 none, 1 inside "…", 2 inside '…'. An apostrophe after a letter (it's) opens nothing."""
    quote, word = divmod(state, 2)
    if char == '"' and quote != 2:
        quote = 1 - quote
    elif char == "'" and quote != 1 and (quote == 2 or not word):
        quote = 2 - quote
    return 2 * quote + char.isalnum()


def _quote_table(text: str) -> list[int]:
    """The quote state after reading `text`, from each of the six states."""
    ends = []
    for state in range(6):
        for char in text:
            state = _quote_step(state, char)
        ends.append(state)
    return ends


def _lowest(text: str) -> int:
    """The lowest bracket depth reached while reading `text`, relative to where it starts (≤ 0)."""
    depth = lowest = 0
    for char in text:
        depth += (char in _OPEN) - (char in _CLOSE)
        lowest = min(lowest, depth)
    return lowest


@dataclass(frozen=True)
class TokenProps:
    """Per vocabulary entry (plus one empty entry at the end for ids outside it): what its text
    does to quotes, brackets, lines and indentation, read character by character once."""

    length: np.ndarray  # characters
    quotes: np.ndarray  # [V + 1, 6]: the quote state after the token, from each state
    depth: np.ndarray  # brackets opened minus closed
    lowest: np.ndarray  # the lowest depth reached inside the token, relative to its start
    newline: np.ndarray  # holds a newline
    after: np.ndarray  # characters after its last newline
    lead: np.ndarray  # leading spaces of the text after its last newline (or of the whole token)
    blank: np.ndarray  # the text after its last newline (or the whole token) is only spaces

    @classmethod
    def from_vocab(cls, vocab: list[str]) -> TokenProps:
        """Summarise each token's text once, so steps are array lookups."""
        texts = [*vocab, ""]
        tails = [text.rsplit("\n", 1)[-1] for text in texts]
        return cls(
            length=np.array([len(t) for t in texts], np.int64),
            quotes=np.array([_quote_table(t) for t in texts], np.int64),
            depth=np.array([sum(t.count(c) for c in _OPEN) - sum(t.count(c) for c in _CLOSE) for t in texts], np.int64),
            lowest=np.array([_lowest(t) for t in texts], np.int64),
            newline=np.array(["\n" in t for t in texts]),
            after=np.array([len(tail) for tail in tails], np.int64),
            lead=np.array([_leading_space(tail) for tail in tails], np.int64),
            blank=np.array([tail.strip(_SPACE) == "" for tail in tails]),
        )


def step_features(ids: np.ndarray, props: TokenProps) -> dict[str, np.ndarray]:
    """Every feature at every step of token windows `ids` [B, T]: name → [B, T] float32."""
    ids = np.where((ids >= 0) & (ids < len(props.length) - 1), ids, len(props.length) - 1)
    batch, steps = ids.shape
    quote = np.zeros(batch, np.int64)  # the quote reader's state (`_quote_step`)
    depth = np.zeros(batch, np.int64)
    floor = np.zeros(batch, np.int64)
    position = np.zeros(batch, np.int64)
    indent = np.zeros(batch, np.int64)
    line_open = np.ones(batch, bool)  # still inside the current line's leading spaces
    out = {name: np.empty((batch, steps), np.float32) for name in (*BINARY, *CONTINUOUS)}
    for t in range(steps):
        k = ids[:, t]
        quote = props.quotes[k, quote]
        np.minimum(floor, depth + props.lowest[k], out=floor)
        depth += props.depth[k]
        newline = props.newline[k]
        position = np.where(newline, props.after[k], position + props.length[k])
        indent = np.where(newline | line_open, np.where(newline, 0, indent) + props.lead[k], indent)
        line_open = np.where(newline, props.blank[k], line_open & props.blank[k])
        out["quotes"][:, t] = quote >= 2
        out["brackets"][:, t] = depth > floor
        out["line_position"][:, t] = position
        out["indentation"][:, t] = indent
    return out
