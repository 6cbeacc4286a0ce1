"""What each unit tracks: text facts against a character-by-character reading, extremes against a
brute-force ranking, exact merges across shards, and habits found where planted and nowhere else."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reporter.layers import Layer
from reporter.replay.text_features import TokenProps, step_features
from reporter.replay.unit_tracks import TrackConfig, UnitTracks

VOCAB = [
    " ",
    "\n",
    "\n  ",
    "a",
    "bc",
    '"',
    "'",
    "(",
    ")",
    "[]",
    "((",
    "x = ",
    "\t",
    "def",
    "\n\t",
    "){",
    ")(",
    "\"'",
    "it's",
    "'a'",
    "])",
]
LAYER = Layer(name="rnn", kind="GRU", directions=1, hidden_size=3, outputs={"h": "out.h"})
BIDI = Layer(name="bi", kind="GRU", directions=2, hidden_size=2, outputs={"h": "bi.h"})


def read_by_character(ids: np.ndarray, vocab: list[str]) -> dict[str, list[float]]:
    """The oracle: walk the decoded text one character at a time, noting the facts after each token."""
    double = single = word = False
    depth = floor = position = indent = 0
    line_open = True
    facts = {"quotes": [], "brackets": [], "line_position": [], "indentation": []}
    for token in (vocab[k] for k in ids):
        for char in token:
            if char == '"' and not single:
                double = not double
            elif char == "'" and not double and (single or not word):  # it's: an apostrophe, not a quote
                single = not single
            word = char.isalnum()
            depth += (char in "([{") - (char in ")]}")
            floor = min(floor, depth)
            if char == "\n":
                position, indent, line_open = 0, 0, True
                continue
            position += 1
            if line_open and char in " \t":
                indent += 1
            else:
                line_open = False
        facts["quotes"].append(float(double or single))
        facts["brackets"].append(float(depth > floor))
        facts["line_position"].append(float(position))
        facts["indentation"].append(float(indent))
    return facts


def test_text_facts_match_a_character_by_character_reading():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(VOCAB), (40, 60))
    got = step_features(ids, TokenProps.from_vocab(VOCAB))
    for window in range(len(ids)):
        expected = read_by_character(ids[window], VOCAB)
        for name, values in expected.items():
            np.testing.assert_array_equal(got[name][window], values, err_msg=f"{name}, window {window}")


def test_ids_outside_the_vocabulary_read_as_empty_text():
    got = step_features(np.array([[3, 99, -1, 3]]), TokenProps.from_vocab(VOCAB))
    np.testing.assert_array_equal(got["line_position"][0], [1, 1, 1, 2])


def _traces(rng, windows: int, steps: int, units: int) -> np.ndarray:
    """Traces with ties (values on a coarse grid) and NaN, the cases a ranking gets wrong."""
    h = np.round(rng.uniform(-1, 1, (windows, steps, 1, units)), 1).astype(np.float32)
    h[rng.random(h.shape) < 0.05] = np.nan
    h[3, :, 0, 0] = np.nan  # a window with no value at all for unit 0
    return h


def _brute_force(h: np.ndarray, windows: np.ndarray, k: int, sign: float) -> list[list[tuple]]:
    """Per unit: each window's peak (first step on ties), ranked by value then window, top k."""
    out = []
    for unit in range(h.shape[-1]):
        peaks = []
        for row, window in enumerate(windows):
            trace = sign * h[row, :, 0, unit]
            if np.all(np.isnan(trace)):
                continue
            t = int(np.nanargmax(trace))
            peaks.append((-float(trace[t]), int(window), t))
        out.append([(-sign * v, w, t) for v, w, t in sorted(peaks)[:k]])
    return out


def _fold(tracks: UnitTracks, h: np.ndarray, windows: np.ndarray, tokens: np.ndarray, batches: list[slice]) -> None:
    for part in batches:
        tracks.fold(tracks.part({LAYER.name: {"h": h[part]}}, windows[part], tokens[part]))


def test_extremes_equal_a_brute_force_ranking_and_merge_exactly_across_shards():
    rng = np.random.default_rng(1)
    h = _traces(rng, 30, 12, 3)
    windows = np.arange(100, 130)
    tokens = rng.integers(0, len(VOCAB), (30, 12))
    config = TrackConfig(k=4, before=3, after=2)
    whole = UnitTracks([LAYER], VOCAB, config)
    _fold(whole, h, windows, tokens, [slice(0, 30)])
    frame = whole.extremes_frame()
    for polarity, sign in (("on", 1.0), ("off", -1.0)):
        expected = _brute_force(h, windows, config.k, sign)
        for unit in range(3):
            rows = frame[(frame["unit"] == unit) & (frame["polarity"] == polarity)]
            got = [(float(v), int(w), int(t)) for v, w, t in zip(rows["value"], rows["window"], rows["t"])]
            assert got == [(pytest.approx(v), w, t) for v, w, t in expected[unit]], (polarity, unit)
    for row in frame.itertuples():  # the context is the tokens around the step, -1 past the window's ends
        local = row.window - 100
        spots = np.arange(row.t - 3, row.t + 3)
        expected = [int(tokens[local, s]) if 0 <= s < 12 else -1 for s in spots]
        assert list(row.context) == expected
    shards = [UnitTracks([LAYER], VOCAB, config) for _ in range(3)]
    _fold(shards[0], h, windows, tokens, [slice(20, 23), slice(23, 30)])
    _fold(shards[1], h, windows, tokens, [slice(0, 7)])
    _fold(shards[2], h, windows, tokens, [slice(7, 11), slice(11, 20)])
    merged = shards[2].merge(shards[0]).merge(shards[1])
    pd.testing.assert_frame_equal(merged.extremes_frame(), frame)
    pd.testing.assert_frame_equal(merged.hypotheses_frame(), whole.hypotheses_frame())
    for key, value in whole.state[LAYER.name].sums.items():
        if value.dtype.kind in "iu":
            np.testing.assert_array_equal(merged.state[LAYER.name].sums[key], value, err_msg=key)
        else:
            np.testing.assert_allclose(merged.state[LAYER.name].sums[key], value, rtol=1e-12, err_msg=key)


def test_a_batchs_top_rows_are_the_first_rows_of_numpys_lexsort():
    """Per unit, the k best windows of a batch without sorting all of them: the same rows as
    `np.lexsort((windows, key))` in the same order, on ties (a coarse grid, −0.0 against 0.0),
    ±inf and NaN (after every number), windows out of order and differing per unit (a merge), and
    k above the batch."""
    from reporter.replay.top_rows import top_rows

    rng = np.random.default_rng(4)
    for _ in range(200):
        rows, units = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        k = int(rng.integers(0, 10))
        key = np.round(rng.normal(size=(rows, units)), 1)
        for value, share in ((np.nan, 0.1), (np.inf, 0.05), (-np.inf, 0.05), (-0.0, 0.05), (0.0, 0.05)):
            key[rng.random(key.shape) < share] = value
        per_row = np.broadcast_to(rng.permutation(1000)[:rows].astype(np.int64)[:, None], key.shape)
        per_unit = np.stack([rng.permutation(1000)[:rows] for _ in range(units)], axis=1).astype(np.int64)
        for windows in (per_row, per_unit):  # a batch's windows; two top-k lists being merged
            expected = np.lexsort((windows, key), axis=0)[:k]
            np.testing.assert_array_equal(top_rows(key, windows, k), expected)


def test_float_windows_keep_extremes_without_context_or_habits():
    rng = np.random.default_rng(2)
    h = rng.uniform(-1, 1, (8, 5, 2, 2)).astype(np.float32)
    tracks = UnitTracks([BIDI], None, TrackConfig(k=2))
    tracks.fold(tracks.part({BIDI.name: {"h": h}}, np.arange(8), rng.random((8, 5, 3), dtype=np.float32)))
    frame = tracks.extremes_frame()
    assert len(frame) == 2 * 2 * 2 * 2  # directions × units × polarities × k
    assert all(len(context) == 0 for context in frame["context"])
    assert sorted(set(zip(frame["direction"], frame["unit"]))) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    top = frame[(frame["direction"] == 1) & (frame["unit"] == 0) & (frame["polarity"] == "on")]
    assert top["value"].iloc[0] == pytest.approx(h[:, :, 1, 0].max())  # direction 1, unit 0 is h[..., 1, 0]
    assert tracks.hypotheses_frame().empty


def _text_windows(rng, windows: int, steps: int) -> tuple[np.ndarray, list[str]]:
    """Character windows of code-like text: words, quoted strings, indented lines."""
    vocab = [" ", "\n", '"', *"abcdefgh=(),:"]
    chunks = []
    while sum(map(len, chunks)) < windows * steps:
        kind = rng.random()
        if kind < 0.2:
            chunks.append("\n" + " " * (4 * int(rng.integers(0, 3))))
        elif kind < 0.4:
            chunks.append('"' + "".join(rng.choice(list("abc de"), int(rng.integers(2, 12)))) + '"')
        else:
            chunks.append("".join(rng.choice(list("abcdefgh=(),:"), int(rng.integers(1, 8)))) + " ")
    text = "".join(chunks)[: windows * steps]
    ids = np.array([vocab.index(char) for char in text]).reshape(windows, steps)
    return ids, vocab


def test_a_planted_quote_cell_and_position_cell_are_described_and_a_random_unit_is_not():
    rng = np.random.default_rng(3)
    ids, vocab = _text_windows(rng, 200, 80)
    facts = [read_by_character(row, vocab) for row in ids]
    quotes = np.array([f["quotes"] for f in facts])
    position = np.array([f["line_position"] for f in facts])
    h = np.stack(
        [
            np.where(quotes > 0, 0.9, -0.2) + rng.normal(0, 0.05, quotes.shape),  # the quote cell
            np.tanh((position - 12) / 10) + rng.normal(0, 0.05, quotes.shape),  # the position cell
            rng.uniform(-1, 1, quotes.shape),  # a unit that tracks nothing
        ],
        axis=-1,
    )[:, :, None, :].astype(np.float32)
    tracks = UnitTracks([LAYER], vocab)
    _fold(tracks, h, np.arange(200), ids, [slice(0, 64), slice(64, 200)])
    habits = tracks.hypotheses_frame()
    first = habits.groupby("unit").head(1).set_index("unit")
    assert first.loc[0, "hypothesis"] == "quotes" and first.loc[0, "polarity"] == "on"
    assert first.loc[0, "text"].startswith("on inside string quotes: 1.00 of its high values"), first.loc[0, "text"]
    assert first.loc[1, "hypothesis"] == "line_position" and first.loc[1, "text"].startswith(
        "rises with position in line: r = 0."
    )
    assert first.loc[1, "score"] > 0.8
    assert 2 not in set(habits["unit"]), habits[habits["unit"] == 2]


def test_a_unit_on_at_one_token_is_described_by_that_token_shown_visibly():
    rng = np.random.default_rng(4)
    ids, vocab = _text_windows(rng, 100, 50)
    h = np.where(ids == vocab.index(" "), 0.8, -0.1)[:, :, None, None].repeat(3, axis=3).astype(np.float32)
    h[..., 1:] = rng.uniform(-0.4, 0.4, h[..., 1:].shape)  # units 1 and 2 are never on or off
    tracks = UnitTracks([LAYER], vocab)
    _fold(tracks, h, np.arange(100), ids, [slice(0, 100)])
    habits = tracks.hypotheses_frame()
    assert set(habits["unit"]) == {0}
    assert [text for text in habits["text"] if text.startswith("on at token ␣: 1.00 of its high values")], habits


def test_steps_without_a_value_take_no_part_in_a_correlation():
    rng = np.random.default_rng(6)
    ids, vocab = _text_windows(rng, 100, 60)
    position = np.array([read_by_character(row, vocab)["line_position"] for row in ids])
    h = np.tanh((position - 12) / 10)[:, :, None, None].repeat(3, axis=3).astype(np.float32)
    h[..., 1:] = rng.uniform(-1, 1, h[..., 1:].shape)
    h[..., 0][rng.random(position.shape) < 0.4] = np.nan  # a position cell with 40% of its values missing
    tracks = UnitTracks([LAYER], vocab)
    _fold(tracks, h, np.arange(100), ids, [slice(0, 50), slice(50, 100)])
    habits = tracks.hypotheses_frame()
    found = habits[(habits["unit"] == 0) & (habits["hypothesis"] == "line_position")]
    seen = ~np.isnan(h[..., 0, 0])
    r = np.corrcoef(h[..., 0, 0][seen], position[seen])[0, 1]
    assert len(found) == 1 and found["score"].iloc[0] == pytest.approx(r, rel=1e-9)


def test_a_backward_units_context_is_mostly_what_follows_its_step():
    rng = np.random.default_rng(7)
    h = rng.uniform(-1, 1, (6, 20, 2, 2)).astype(np.float32)
    tokens = rng.integers(0, len(VOCAB), (6, 20))
    tracks = UnitTracks([BIDI], VOCAB, TrackConfig(k=3, before=4, after=1))
    tracks.fold(tracks.part({BIDI.name: {"h": h}}, np.arange(6), tokens))
    for row in tracks.extremes_frame().itertuples():
        lo, hi = (row.t - 1, row.t + 4) if row.direction == 1 else (row.t - 4, row.t + 1)  # reverse reads t..end
        expected = [int(tokens[row.window, s]) if 0 <= s < 20 else -1 for s in range(lo, hi + 1)]
        assert list(row.context) == expected, (row.direction, row.t)
