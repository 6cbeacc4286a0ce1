"""A run's weights: each gate block is the torch module's own block (ONNX stacks them i o f c,
torch i f g o), the recurrent spectra are numpy's singular values and eigenvalues, and the run page
and the weights page show them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reporter.model.weights import MAP_SIZE, layer_weights, weight_blocks
from reporter.pipeline.model_source import ModelRecipe, exposed_model
from reporter.report.weight_charts import EXPLODING, FORGETTING, weight_warnings

TORCH_ORDER = {"LSTM": "ifgo", "GRU": "rzn"}  # torch stacks LSTM i f g o, GRU r z n


@pytest.mark.parametrize(
    "module",
    [torch.nn.LSTM(3, 5, num_layers=2, batch_first=True), torch.nn.GRU(3, 4, bidirectional=True, batch_first=True)],
)
def test_each_block_is_the_modules_own_weights_and_its_spectrum_is_numpys(module, tmp_path):
    torch.manual_seed(0)
    kind = type(module).__name__
    checkpoint = tmp_path / "m.pt"
    torch.save(module.state_dict(), checkpoint)
    factory = f"torch.nn:{kind}"
    kwargs = {"input_size": 3, "hidden_size": module.hidden_size, "num_layers": module.num_layers}
    kwargs |= {"batch_first": True, "bidirectional": module.bidirectional}
    model = exposed_model(ModelRecipe(checkpoint, factory, kwargs))
    weights, maps = layer_weights(model.fused, model.layers)
    hidden, state = module.hidden_size, module.state_dict()
    assert len(weights) == module.num_layers * (2 if module.bidirectional else 1) * len(TORCH_ORDER[kind]) * 2
    for row in weights.itertuples():
        layer = int(row.layer.rsplit(".l", 1)[1])
        suffix = f"_l{layer}" + ("_reverse" if row.direction == 1 else "")
        name = ("weight_ih" if row.matrix == "input" else "weight_hh") + suffix
        k = TORCH_ORDER[kind].index(row.gate)
        block = state[name][k * hidden : (k + 1) * hidden].numpy().astype(np.float64)
        assert row.frobenius == pytest.approx(np.linalg.norm(block), rel=1e-6), (row.layer, row.gate, row.matrix)
        if row.matrix == "recurrent":
            np.testing.assert_allclose(row.singular_values, np.linalg.svd(block, compute_uv=False), rtol=1e-5)
            assert row.spectral_radius == pytest.approx(np.abs(np.linalg.eigvals(block)).max(), rel=1e-5)
        binned = maps[f"{row.layer}/{row.direction}/{row.gate}/{row.matrix}"]
        assert binned.shape == (min(MAP_SIZE, block.shape[0]), min(MAP_SIZE, block.shape[1]))
        np.testing.assert_allclose(binned, block, rtol=1e-6, atol=1e-7)  # small blocks are kept as they are
    whole = weight_blocks(model.fused, model.layers)
    assert whole.keys() == maps.keys() and all(block.dtype == np.float32 for block in whole.values())
    for row in weights.itertuples():  # whole blocks are the module's own, bit for bit
        layer = int(row.layer.rsplit(".l", 1)[1])
        name = (
            ("weight_ih" if row.matrix == "input" else "weight_hh")
            + f"_l{layer}"
            + ("_reverse" if row.direction else "")
        )
        k = TORCH_ORDER[kind].index(row.gate)
        expected = state[name][k * hidden : (k + 1) * hidden].numpy()
        np.testing.assert_array_equal(whole[f"{row.layer}/{row.direction}/{row.gate}/{row.matrix}"], expected)
    assert weight_blocks(model.fused, model.layers, limit=sum(b.size for b in whole.values()) - 1) == {}


def test_large_blocks_are_binned_to_cell_means():
    from onnx import TensorProto, helper, numpy_helper

    from reporter.layers import Layer

    rng = np.random.default_rng(0)
    w = rng.standard_normal((1, 100, 70)).astype(np.float32)
    r = rng.standard_normal((1, 100, 100)).astype(np.float32)
    node = helper.make_node("RNN", ["x", "W", "R"], ["y"], name="rnn", hidden_size=100)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 70])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R")],
    )
    layer = Layer("rnn", "RNN", 1, 100, {"h": "h"}, node="rnn")
    weights, maps = layer_weights(helper.make_model(graph), [layer])
    binned = maps["rnn/0/h/input"]
    rows, cols = np.array_split(np.arange(100), MAP_SIZE), np.array_split(np.arange(70), MAP_SIZE)
    assert binned.shape == (MAP_SIZE, MAP_SIZE)
    assert binned[3, 5] == pytest.approx(w[0][np.ix_(rows[3], cols[5])].mean(), rel=1e-6)
    radius = float(weights[weights["matrix"] == "recurrent"]["spectral_radius"].iloc[0])
    lines = weight_warnings(weights)
    assert (radius > EXPLODING) == any("may explode" in line for line in lines)
    assert not any("forgets fast" in line for line in lines) or radius < FORGETTING


def test_the_run_page_shows_each_blocks_spectrum_and_links_the_heatmaps(sample_runs, tmp_path):
    from reporter.report.site import build_site

    run = sample_runs[("forecaster", "v1")]
    site = build_site([(run, None)], tmp_path / "site", progress=lambda line: None)
    page = (site / "runs" / "forecaster-v1" / "index.html").read_text(encoding="utf-8")
    section = page[page.index('id="weights"') :]
    assert '<a href="weights.html">' in section and (site / "runs" / "forecaster-v1" / "weights.html").is_file()
    for row in run.weights[run.weights["matrix"] == "recurrent"].itertuples():
        assert f"{row.spectral_radius:.3f}" in section
    heatmaps = (site / "runs" / "forecaster-v1" / "weights.html").read_text(encoding="utf-8")
    assert all(f'id="chart-weights-{layer.name}' in heatmaps for layer in run.layers)
