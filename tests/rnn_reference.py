"""A float64 numpy reading of the ONNX LSTM, GRU and RNN operators that keeps every gate.

Written from the operator spec (onnx.ai/onnx/operators/onnx__LSTM.html, GRU, RNN) and, where the
spec leaves a choice open, onnxruntime's convention:

- `clip` bounds each gate's pre-activation (after the peephole term) before its activation;
- `activation_alpha` / `activation_beta` are consumed in order by the activations that take
  them, across both directions; an activation without a value gets its default;
- `input_forget` makes the forget gate `1 - i`;
- steps past a sequence's length hold the state and give 0 in every output; a sequence of
  length 0 gives 0 in `Y_h` and `Y_c` too, not its initial state.

`run(kind, X, W, R, ...)` returns `Result(gates, Y, Y_h, Y_c)`: `gates` maps each gate name
(LSTM `i f g o c h`, GRU `z r n h`, RNN `h`) to a `[batch, time, directions, hidden]` array aligned
to input time, and `Y`, `Y_h`, `Y_c` are in the node's own layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

GATES = {"LSTM": ("i", "f", "g", "o", "c", "h"), "GRU": ("z", "r", "n", "h"), "RNN": ("h",)}
"""The gates each kind reports, in manifest order."""

N_BLOCKS = {"LSTM": 4, "GRU": 3, "RNN": 1}
"""Row blocks of W and R per direction."""

DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
"""Activations of one direction when the node names none."""

# name -> (takes alpha, takes beta, default alpha, default beta): onnxruntime's table.
_PARAMETERS = {
    "Relu": (False, False, 0.0, 0.0),
    "Tanh": (False, False, 0.0, 0.0),
    "Sigmoid": (False, False, 0.0, 0.0),
    "Affine": (True, True, 0.0, 0.0),
    "LeakyRelu": (True, False, 0.01, 0.0),
    "ThresholdedRelu": (True, False, 0.0, 0.0),
    "ScaledTanh": (True, True, 0.0, 0.0),
    "HardSigmoid": (True, True, 0.2, 0.5),
    "Elu": (True, False, 1.0, 0.0),
    "Softsign": (False, False, 0.0, 0.0),
    "Softplus": (False, False, 0.0, 0.0),
}


def activation(name: str, alpha: float, beta: float) -> Callable[[np.ndarray], np.ndarray]:
    """Return the spec's activation `name` with its alpha and beta bound."""
    functions = {
        "Relu": lambda x: np.maximum(x, 0.0),
        "Tanh": np.tanh,
        "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
        "Affine": lambda x: alpha * x + beta,
        "LeakyRelu": lambda x: np.where(x >= 0, x, alpha * x),
        "ThresholdedRelu": lambda x: np.where(x >= alpha, x, 0.0),
        "ScaledTanh": lambda x: alpha * np.tanh(beta * x),
        "HardSigmoid": lambda x: np.clip(alpha * x + beta, 0.0, 1.0),
        "Elu": lambda x: np.where(x >= 0, x, alpha * (np.exp(x) - 1.0)),
        "Softsign": lambda x: x / (1.0 + np.abs(x)),
        "Softplus": lambda x: np.log1p(np.exp(x)),
    }
    return functions[name]


def bind_activations(
    names: list[str], alphas: list[float] | None, betas: list[float] | None
) -> list[Callable[[np.ndarray], np.ndarray]]:
    """Bind every activation in `names` to its alpha and beta, consuming the lists in order."""
    alphas, betas = list(alphas or []), list(betas or [])
    bound = []
    for name in names:
        takes_alpha, takes_beta, alpha, beta = _PARAMETERS[name]
        if takes_alpha and alphas:
            alpha = alphas.pop(0)
        if takes_beta and betas:
            beta = betas.pop(0)
        bound.append(activation(name, alpha, beta))
    return bound


@dataclass
class Result:
    """Every gate as `[batch, time, directions, hidden]`, and the op's outputs in its layout."""

    gates: dict[str, np.ndarray]
    Y: np.ndarray
    Y_h: np.ndarray
    Y_c: np.ndarray | None = None


@dataclass
class _Direction:
    """One direction's parameters, in float64, split into the spec's row blocks."""

    W: list[np.ndarray]
    R: list[np.ndarray]
    Wb: list[np.ndarray]
    Rb: list[np.ndarray]
    P: list[np.ndarray] = field(default_factory=list)
    acts: list[Callable[[np.ndarray], np.ndarray]] = field(default_factory=list)


def _clipper(clip: float | None) -> Callable[[np.ndarray], np.ndarray]:
    if clip is None:
        return lambda x: x
    return lambda x: np.clip(x, -clip, clip)


def lstm_step(d: _Direction, x, h, c, clip, input_forget):
    """One LSTM step (spec block order i, o, f, c); return gates i f g o and the new C, H."""
    (Wi, Wo, Wf, Wc), (Ri, Ro, Rf, Rc) = d.W, d.R
    bi, bo, bf, bc = (wb + rb for wb, rb in zip(d.Wb, d.Rb))
    Pi, Po, Pf = d.P
    f_act, g_act, h_act = d.acts
    i = f_act(clip(x @ Wi.T + h @ Ri.T + Pi * c + bi))
    if input_forget:
        f = 1.0 - i
    else:
        f = f_act(clip(x @ Wf.T + h @ Rf.T + Pf * c + bf))
    g = g_act(clip(x @ Wc.T + h @ Rc.T + bc))
    c_new = f * c + i * g
    o = f_act(clip(x @ Wo.T + h @ Ro.T + Po * c_new + bo))
    h_new = o * h_act(c_new)
    return {"i": i, "f": f, "g": g, "o": o, "c": c_new, "h": h_new}


def gru_step(d: _Direction, x, h, clip, linear_before_reset):
    """One GRU step (spec block order z, r, h); return gates z r n and the new H."""
    (Wz, Wr, Wh), (Rz, Rr, Rh) = d.W, d.R
    (Wbz, Wbr, Wbh), (Rbz, Rbr, Rbh) = d.Wb, d.Rb
    f_act, g_act = d.acts
    z = f_act(clip(x @ Wz.T + h @ Rz.T + Wbz + Rbz))
    r = f_act(clip(x @ Wr.T + h @ Rr.T + Wbr + Rbr))
    if linear_before_reset:
        n = g_act(clip(x @ Wh.T + r * (h @ Rh.T + Rbh) + Wbh))
    else:
        n = g_act(clip(x @ Wh.T + (r * h) @ Rh.T + Rbh + Wbh))
    h_new = (1.0 - z) * n + z * h
    return {"z": z, "r": r, "n": n, "h": h_new}


def rnn_step(d: _Direction, x, h, clip):
    """One simple RNN step; return the new H."""
    (Wi,), (Ri,), (Wbi,), (Rbi,) = d.W, d.R, d.Wb, d.Rb
    return {"h": d.acts[0](clip(x @ Wi.T + h @ Ri.T + Wbi + Rbi))}


def _run_direction(kind, d, X, lengths, h0, c0, reverse, clip, input_forget, linear_before_reset):
    """Run one direction over X `[T, B, I]`; return gates `[B, T, H]` and the final h, c."""
    T, B = X.shape[:2]
    gates = {name: np.zeros((B, T, h0.shape[-1])) for name in GATES[kind]}
    h, c = h0, c0
    for t in reversed(range(T)) if reverse else range(T):
        if kind == "LSTM":
            step = lstm_step(d, X[t], h, c, clip, input_forget)
        elif kind == "GRU":
            step = gru_step(d, X[t], h, clip, linear_before_reset)
        else:
            step = rnn_step(d, X[t], h, clip)
        live = (t < lengths)[:, None]  # past a sequence's end: hold the state, output 0
        for name, value in step.items():
            gates[name][:, t] = np.where(live, value, 0.0)
        h = np.where(live, step["h"], h)
        if kind == "LSTM":
            c = np.where(live, step["c"], c)
    return gates, h, c


def _directions(kind, W, R, B, P, activations, alpha, beta) -> list[_Direction]:
    """Split W, R, B, P into per-direction blocks and bind each direction's activations."""
    n_dir, hidden = R.shape[0], R.shape[-1]
    n = N_BLOCKS[kind]
    per_direction = len(DEFAULT_ACTIVATIONS[kind])
    names = list(activations) if activations else list(DEFAULT_ACTIVATIONS[kind]) * n_dir
    acts = bind_activations(names, alpha, beta)
    if B is None:
        B = np.zeros((n_dir, 2 * n * hidden))
    if P is None and kind == "LSTM":
        P = np.zeros((n_dir, 3 * hidden))
    out = []
    for k in range(n_dir):
        out.append(
            _Direction(
                W=np.split(W[k].astype(np.float64), n),
                R=np.split(R[k].astype(np.float64), n),
                Wb=np.split(B[k, : n * hidden].astype(np.float64), n),
                Rb=np.split(B[k, n * hidden :].astype(np.float64), n),
                P=np.split(P[k].astype(np.float64), 3) if kind == "LSTM" else [],
                acts=acts[k * per_direction : (k + 1) * per_direction],
            )
        )
    return out


def run(
    kind: str,
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    initial_c: np.ndarray | None = None,
    P: np.ndarray | None = None,
    *,
    direction: str = "forward",
    layout: int = 0,
    activations: list[str] | None = None,
    activation_alpha: list[float] | None = None,
    activation_beta: list[float] | None = None,
    clip: float | None = None,
    input_forget: int = 0,
    linear_before_reset: int = 0,
) -> Result:
    """Run an ONNX `kind` node ("LSTM", "GRU" or "RNN") with the given inputs and attributes.

    Inputs are laid out as the spec says for `layout` (0: X `[T, B, I]`, states `[D, B, H]`;
    1: X `[B, T, I]`, states `[B, D, H]`); the gates come back `[B, T, D, H]` either way.
    """
    if layout:
        X = np.swapaxes(X, 0, 1)
        initial_h = None if initial_h is None else np.swapaxes(initial_h, 0, 1)
        initial_c = None if initial_c is None else np.swapaxes(initial_c, 0, 1)
    X = X.astype(np.float64)
    T, batch = X.shape[:2]
    n_dir, hidden = R.shape[0], R.shape[-1]
    assert n_dir == (2 if direction == "bidirectional" else 1)
    lengths = np.full(batch, T) if sequence_lens is None else np.asarray(sequence_lens)
    zeros = np.zeros((n_dir, batch, hidden))
    h0 = zeros if initial_h is None else initial_h.astype(np.float64)
    c0 = zeros if initial_c is None else initial_c.astype(np.float64)
    params = _directions(kind, W, R, B, P, activations, activation_alpha, activation_beta)

    per_direction, last_h, last_c = [], [], []
    for k, d in enumerate(params):
        reverse = direction == "reverse" or k == 1
        gates, h, c = _run_direction(
            kind, d, X, lengths, h0[k], c0[k], reverse, _clipper(clip), input_forget, linear_before_reset
        )
        per_direction.append(gates)
        last_h.append(h)
        last_c.append(c)

    gates = {name: np.stack([g[name] for g in per_direction], axis=2) for name in GATES[kind]}
    Y = gates["h"].transpose(1, 2, 0, 3)  # [T, D, B, H]
    Y_h, Y_c = np.stack(last_h), np.stack(last_c)  # [D, B, H]
    Y_h, Y_c = (np.where((lengths > 0)[:, None], s, 0.0) for s in (Y_h, Y_c))  # empty: 0, not initial
    if layout:
        Y, Y_h, Y_c = Y.transpose(2, 0, 1, 3), Y_h.transpose(1, 0, 2), Y_c.transpose(1, 0, 2)
    return Result(gates, Y, Y_h, Y_c if kind == "LSTM" else None)
