"""What each unit tracks: where its hidden state is most on and off, and the habits that explain it.

Per layer, over every replayed window (streamed: one batch at a time, memory flat), of each
unit's hidden state `h` (the value every cell kind has and passes on):

- **Extremes.** The k windows where the unit is highest ("on") and lowest ("off"), each with its
  step and, for token windows, the tokens around that step (mostly before it; mostly after it for
  units that read the window backwards). One entry per window (its peak), so a
  long quote does not fill the list with one window's neighbouring steps. Merging keeps the top k
  of both sides by (value, then window index): exact, in any order.
- **Hypotheses** (token windows). Counts and sums that merge by addition, from which a unit's habit
  is read: the share of its on (h > 0.5) or off (h < −0.5) steps that are inside quotes, inside
  brackets, at a given token or just after one, against how common that is; and the correlation
  of h with the position in the line and the indentation (`text_features`). A habit holds when it
  covers most of the unit's polar steps, is at least twice as common there as overall, and covers
  half the steps where the fact holds; or when |r| ≥ 0.6. A unit with no habit gets no description.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reporter.layers import Layer, direction_names
from reporter.replay.text_features import BINARY, CONTINUOUS, TokenProps, step_features
from reporter.replay.top_rows import top_rows
from reporter.vocab import shown

__all__ = ["EXTREMES_COLUMNS", "HYPOTHESES_COLUMNS", "TrackConfig", "UnitTracks", "reads_backward"]

EXTREMES_COLUMNS = ("layer", "direction", "unit", "polarity", "rank", "value", "window", "t", "context")
HYPOTHESES_COLUMNS = ("layer", "direction", "unit", "hypothesis", "polarity", "score", "base", "count", "text")
GATE = "h"
_POLES = ("on", "off")
_FEATURE_WORDS = {
    "quotes": "inside string quotes",
    "brackets": "inside brackets",
    "line_position": "position in line",
    "indentation": "indentation depth",
}


@dataclass(frozen=True)
class TrackConfig:
    """How units are tracked: list lengths, what counts as on, when a habit holds."""

    k: int = 6  # windows kept per unit and polarity
    before: int = 24  # context tokens kept before the step
    after: int = 8  # and after it
    on: float = 0.5  # h above this is on, below −on is off
    share: float = 0.75  # a habit covers at least this share of the unit's on (off) steps
    lift: float = 2.0  # and is at least this many times more common there than overall
    coverage: float = 0.5  # and the unit is on (off) at this share of the steps where it holds
    min_count: int = 20  # polar steps needed before a habit is read
    correlation: float = 0.6  # |r| with a continuous feature that holds
    max_vocab: int = 512  # token habits ("at", "after" a token) for vocabularies up to this size


@dataclass
class _Extremes:
    """Top k per unit, for one polarity: value, window, step, context ids ([k, U] and [k, U, C])."""

    value: np.ndarray
    window: np.ndarray
    t: np.ndarray
    context: np.ndarray

    def merge(self, other: _Extremes, k: int, sign: float) -> _Extremes:
        """The top k of both (by sign × value, ties to the lower window): exact and order-free."""
        value = np.concatenate([self.value, other.value])
        window = np.concatenate([self.window, other.window])
        order = top_rows(-sign * np.asarray(value, np.float64), window, k)
        take = lambda a: np.take_along_axis(a, order, axis=0)  # noqa: E731
        context = np.concatenate([self.context, other.context])
        return _Extremes(
            take(value),
            take(window),
            take(np.concatenate([self.t, other.t])),
            context[order, np.arange(value.shape[1])],
        )


def _per_window(h: np.ndarray, sign: float) -> tuple[np.ndarray, np.ndarray]:
    """Each window's peak value and step per unit ([B, U] each; NaN never peaks, first step on ties)."""
    scored = np.where(np.isnan(h), -np.inf, sign * h)  # [B, T, U]
    steps = scored.argmax(axis=1)
    return sign * np.take_along_axis(scored, steps[:, None, :], axis=1)[:, 0], steps


def reads_backward(layer: Layer) -> np.ndarray:
    """Per unit (direction-major), whether it reads the window from its end: a reverse layer's
    units, and a bidirectional layer's second direction. Their context is mostly what follows."""
    backward = [name == "reverse" for name in direction_names(layer)]
    return np.repeat(np.array(backward, bool), layer.hidden_size)


def _peaks(
    found: tuple, windows: np.ndarray, tokens, config: TrackConfig, sign: float, backward: np.ndarray
) -> _Extremes:
    """One batch's candidates: per unit, each window's peak (`found`: value and step [B, U]), the
    batch's best k of them."""
    best, steps = sign * np.asarray(found[0], np.float64), np.asarray(found[1], np.int64)
    units = best.shape[1]
    k = min(config.k, len(windows))
    order = top_rows(-best, np.broadcast_to(np.asarray(windows, np.int64)[:, None], best.shape), k)
    value = sign * np.take_along_axis(best, order, axis=0)
    t = np.take_along_axis(steps, order, axis=0)
    width = config.before + 1 + config.after if tokens is not None else 0
    context = np.full((k, units, width), -1, np.int64)
    if tokens is not None:
        ahead = np.where(
            backward[:, None], np.arange(-config.after, config.before + 1), np.arange(-config.before, config.after + 1)
        )
        spots = t[:, :, None] + ahead[None]  # [k, U, C]: a backward unit's context lies mostly after its step
        inside = (spots >= 0) & (spots < tokens.shape[1])
        context = np.where(inside, tokens[order[:, :, None], np.clip(spots, 0, tokens.shape[1] - 1)], -1)
    keep = sign * value > -np.inf  # a unit whose every value is NaN has no peak (an infinite one has)
    value = np.where(keep, value, np.nan).astype(np.float32)
    return _Extremes(value, windows[order], t, context)


_ROWS = 2048  # steps counted at once: bounded temporaries, and float32 counts stay exact (< 2**24)


def _batch_facts(tokens: np.ndarray, props: TokenProps, by_token: bool) -> dict[str, np.ndarray]:
    """Per step of a batch (flattened): the binary and sized text facts, and with `by_token` the
    token and the previous one, each step's place in an order grouping equal tokens."""
    features = step_features(tokens, props)
    facts = {
        "binary": np.stack([features[name].reshape(-1) for name in BINARY], axis=1),
        "sized": np.stack([features[name].reshape(-1) for name in CONTINUOUS], axis=1).astype(np.float64),
    }
    if by_token:
        vocab = len(props.length) - 1
        ids = np.where((tokens >= 0) & (tokens < vocab), tokens, vocab)  # ids outside it count as one "other"
        previous = np.concatenate([np.full((len(ids), 1), vocab), ids[:, :-1]], axis=1)
        facts |= {"token": ids.reshape(-1), "after": previous.reshape(-1), "vocab": np.array(vocab)}
    return facts


def _by_token(polar: np.ndarray, ids: np.ndarray, vocab: int) -> np.ndarray:
    """Per unit and token, the steps where the unit is polar at that token: [U, vocab], exact,
    from row blocks sorted by token (one add per value, whatever the vocabulary's size)."""
    counts = np.zeros((vocab + 1, polar.shape[1]), np.int64)
    for start in range(0, len(ids), _ROWS):
        block = ids[start : start + _ROWS]
        order = np.argsort(block, kind="stable")
        present, first = np.unique(block[order], return_index=True)
        counts[present] += np.add.reduceat(polar[start : start + _ROWS][order].astype(np.int32), first, axis=0)
    return counts[:vocab].T


def _blocks(polar: np.ndarray, binary: np.ndarray) -> np.ndarray:
    """Per unit and binary fact, the steps where both hold: [U, F], exact (float32 sums of blocks
    below 2**24 rows, added as integers)."""
    total = np.zeros((polar.shape[1], binary.shape[1]), np.int64)
    for i in range(0, len(polar), _ROWS):
        total += (polar[i : i + _ROWS].T.astype(np.float32) @ binary[i : i + _ROWS]).round().astype(np.int64)
    return total


def _sums(h: np.ndarray, facts: dict[str, np.ndarray], on: float) -> dict[str, np.ndarray]:
    """A layer's hypothesis counts and sums over one batch's steps (h [N, U], `_batch_facts`)."""
    polar = {"on": h > on, "off": h < -on}
    valid = np.isfinite(h)  # a NaN or infinite step takes no part in a correlation
    values = np.where(valid, h, 0).astype(np.float64)
    sized, seen = facts["sized"], valid.astype(np.float64)
    sums = {"steps": np.array(len(h), np.int64), "on": polar["on"].sum(0), "off": polar["off"].sum(0)}
    sums |= {"n": valid.sum(0), "sx": values.sum(0), "sxx": (values**2).sum(0)}
    sums |= {"sf": seen.T @ sized, "sff": seen.T @ sized**2, "sxf": values.T @ sized}
    base = [facts["binary"].sum(0, dtype=np.int64)]
    for name in ("on", "off"):
        sums[f"{name}_f"] = [_blocks(polar[name], facts["binary"])]
    if "token" in facts:
        vocab = int(facts["vocab"])
        for key in ("token", "after"):
            base.append(np.bincount(facts[key], minlength=vocab + 1)[:vocab])
            for name in ("on", "off"):
                sums[f"{name}_f"].append(_by_token(polar[name], facts[key], vocab))
    sums["base"] = np.concatenate(base)
    for name in ("on", "off"):
        sums[f"{name}_f"] = np.concatenate(sums[f"{name}_f"], axis=1)
    return sums


@dataclass
class _Layer:
    """One layer's tracking state."""

    units: int
    extremes: dict[str, _Extremes]
    sums: dict[str, np.ndarray] = field(default_factory=dict)  # merged by addition


class UnitTracks:
    """Per layer, what each unit of h tracks, over every window replayed (`part`, `fold`, `merge`)."""

    def __init__(self, layers: list[Layer], vocab: list[str] | None = None, config: TrackConfig | None = None):
        self.config = config or TrackConfig()
        self.layers = [layer for layer in layers if GATE in layer.outputs]
        self.vocab = vocab
        self.props = TokenProps.from_vocab(vocab) if vocab is not None else None
        self.state: dict[str, _Layer] = {}

    def part(
        self,
        gates: dict[str, dict[str, np.ndarray]],
        windows: np.ndarray,
        inputs: np.ndarray,
        peaks: dict | None = None,
    ) -> dict:
        """One batch (`gates`: layer → gate → [B, T, D, H]; `windows`: their indices; `inputs`:
        their model input) as fresh states; nothing accumulated yet. `peaks`, per layer, are the
        windows' highest and lowest h with their steps when replay's fused pass found them."""
        parts, facts = {}, {}  # the text facts are the same for every layer: read once per batch
        for layer in self.layers:
            if layer.name not in gates:
                continue  # did not run on this batch (an If branch)
            trace = gates[layer.name][GATE]
            batch, steps = trace.shape[:2]
            h = trace.reshape(batch, steps, -1).astype(np.float32, copy=False)
            tokens = inputs if _is_tokens(inputs, batch, steps) else None
            part = _Layer(h.shape[2], {})
            found = (peaks or {}).get(layer.name)
            for k, (polarity, sign) in enumerate(zip(_POLES, (1.0, -1.0))):
                best = (found[2 * k], found[2 * k + 1]) if found is not None else _per_window(h, sign)
                part.extremes[polarity] = _peaks(best, windows, tokens, self.config, sign, reads_backward(layer))
            if tokens is not None and self.props is not None:
                if not facts:
                    facts = _batch_facts(tokens, self.props, len(self.vocab) <= self.config.max_vocab)
                part.sums = _sums(h.reshape(batch * steps, -1), facts, self.config.on)
            parts[layer.name] = part
        return parts

    def fold(self, parts: dict) -> None:
        """Fold states made by `part` (by any UnitTracks of the same layers) into this one."""
        for name, part in parts.items():
            self.state[name] = _merge_layer(self.state.get(name), part, self.config)

    def merge(self, other: UnitTracks) -> UnitTracks:
        """Both replays' windows together."""
        merged = UnitTracks(self.layers, self.vocab, self.config)
        merged.fold(self.state)
        merged.fold(other.state)
        return merged

    def extremes_frame(self) -> pd.DataFrame:
        """unit_extremes: per layer, direction, unit, polarity, the k peaks in order."""
        rows = []
        for layer in self.layers:
            state = self.state.get(layer.name)
            if state is None:
                continue
            for polarity, top in state.extremes.items():
                for rank in range(top.value.shape[0]):
                    for unit in range(state.units):
                        if np.isnan(top.value[rank, unit]):
                            continue
                        rows.append(
                            (layer.name, unit // layer.hidden_size, unit % layer.hidden_size, polarity, rank,
                             float(top.value[rank, unit]), int(top.window[rank, unit]), int(top.t[rank, unit]),
                             [int(i) for i in top.context[rank, unit]])
                        )  # fmt: skip
        frame = pd.DataFrame(rows, columns=list(EXTREMES_COLUMNS))
        frame = frame.sort_values(["layer", "direction", "unit", "polarity", "rank"], kind="stable")
        return _typed(frame, EXTREMES_COLUMNS)

    def hypotheses_frame(self) -> pd.DataFrame:
        """unit_hypotheses: every habit that holds, one row each, strongest first per unit."""
        rows = []
        for layer in self.layers:
            state = self.state.get(layer.name)
            if state is not None and state.sums:
                rows += _habits(layer, state, self._fact_names(state), self.config)
        frame = pd.DataFrame(rows, columns=list(HYPOTHESES_COLUMNS))
        frame = frame.assign(strength=-frame["score"].abs()).sort_values(
            ["layer", "direction", "unit", "strength", "hypothesis"], kind="stable"
        )
        return _typed(frame, HYPOTHESES_COLUMNS)

    def _fact_names(self, state: _Layer) -> list[tuple[str, str]]:
        """(key, words) of each counted fact, in the order `_sums` stacked them."""
        names = [(name, _FEATURE_WORDS[name]) for name in BINARY]
        size = len(state.sums.get("base", [])) - len(names)
        if size > 0:
            names += [(f"token:{k}", f"at token {shown(self.vocab[k])}") for k in range(size // 2)]
            names += [(f"after:{k}", f"just after token {shown(self.vocab[k])}") for k in range(size // 2)]
        return names


def _is_tokens(inputs: np.ndarray | None, batch: int, steps: int) -> bool:
    """Whether the batch's input is token ids, one per gate step."""
    return inputs is not None and inputs.dtype.kind in "iu" and inputs.shape == (batch, steps)


def _merge_layer(mine: _Layer | None, part: _Layer, config: TrackConfig) -> _Layer:
    if mine is None:
        return part
    extremes = {
        polarity: mine.extremes[polarity].merge(part.extremes[polarity], config.k, sign)
        for polarity, sign in zip(_POLES, (1.0, -1.0))
    }
    sums = {key: mine.sums[key] + part.sums[key] for key in mine.sums} if mine.sums else dict(part.sums)
    return _Layer(mine.units, extremes, sums)


def _habits(layer: Layer, state: _Layer, facts: list[tuple[str, str]], config: TrackConfig) -> list[tuple]:
    """Every hypothesis that holds for a layer's units, as hypotheses_frame rows."""
    sums, rows = state.sums, []
    steps = max(int(sums["steps"]), 1)
    base = sums["base"] / steps  # [F]
    for polarity, word in zip(_POLES, ("high", "low")):
        polar = sums[polarity]  # [U]
        share = sums[f"{polarity}_f"] / np.maximum(polar, 1)[:, None]  # [U, F]
        coverage = sums[f"{polarity}_f"] / np.maximum(sums["base"], 1)[None, :]
        holds = (polar[:, None] >= config.min_count) & (share >= config.share)
        holds &= (share >= config.lift * base[None, :]) & (coverage >= config.coverage)
        for u, f in zip(*np.nonzero(holds)):
            key, words = facts[f]
            text = f"{polarity} {words}: {share[u, f]:.2f} of its {word} values ({base[f]:.2f} of all steps)"
            rows.append(
                (
                    layer.name,
                    *divmod(int(u), layer.hidden_size),
                    key,
                    polarity,
                    share[u, f],
                    base[f],
                    int(polar[u]),
                    text,
                )
            )
    for f, name in enumerate(CONTINUOUS):
        for u in range(state.units):
            r = _correlation(sums, u, f)
            if abs(r) >= config.correlation:
                verb = "rises" if r > 0 else "falls"
                text = f"{verb} with {_FEATURE_WORDS[name]}: r = {r:.2f}"
                rows.append((layer.name, *divmod(u, layer.hidden_size), name, verb, r, np.nan, steps, text))
    return rows


def _correlation(sums: dict, u: int, f: int) -> float:
    """Pearson's r of unit u's h with continuous feature f, from the streamed sums over the steps
    where h is finite."""
    n = float(sums["n"][u])
    if n < 2:
        return 0.0
    cov = sums["sxf"][u, f] - sums["sx"][u] * sums["sf"][u, f] / n
    var_x = sums["sxx"][u] - sums["sx"][u] ** 2 / n
    var_f = sums["sff"][u, f] - sums["sf"][u, f] ** 2 / n
    if var_x <= 1e-12 * n or var_f <= 1e-12 * n:
        return 0.0
    return float(cov / np.sqrt(var_x * var_f))


def _typed(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Fixed columns and dtypes, so parquet files written from it are byte-identical."""
    types = {"layer": str, "polarity": str, "hypothesis": str, "text": str, "context": object}
    ints = {"direction", "unit", "rank", "window", "t", "count"}
    dtypes = {c: types.get(c, np.int64 if c in ints else np.float64) for c in columns}
    return frame.loc[:, list(columns)].astype(dtypes).reset_index(drop=True)
