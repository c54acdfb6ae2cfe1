"""CROWN intermediate bounds of a small conv network with upsampling, tanh and sigmoid: sound on
10^4 samples, inside IBP, and the same on the rows' supports (chunked) as by dense passes."""

from __future__ import annotations

import torch

from genbab.bounds import engine_for
from genbab.model.loading import load_model


def _model(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 16, 3, padding=1), torch.nn.Tanh(), torch.nn.Upsample(scale_factor=2),
        torch.nn.Conv2d(16, 4, 3, padding=1), torch.nn.Sigmoid(), torch.nn.Conv2d(4, 4, 3, padding=1)).eval()
    path = tmp_path / "conv.onnx"
    torch.onnx.export(net, (torch.zeros(1, 2, 8, 8),), str(path), opset_version=11, dynamo=False)
    return net, load_model(path, use_cache=False)


def test_conv_bounds_sound_tight_and_chunk_independent(tmp_path):
    net, model = _model(tmp_path)
    engine = engine_for(model)
    x0 = torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    box = engine.box(x0 - 0.05, x0 + 0.05)
    convs = [n.name for n in engine.nodes if n.op_type == "Conv"]
    assert engine.sparse_rows_apply(convs[1])  # 4x16x16 = 1024 values: the support path runs
    with torch.no_grad():
        crown, ibp = engine.intermediate_bounds(box, "crown"), engine.interval_bounds(box)
        xs = (x0 + 0.05 * (2 * torch.rand(10_000, 2, 8, 8, generator=torch.Generator().manual_seed(2)) - 1)).float()
        values = [net[:k](xs).double() for k in (1, 4, 6)]
        for name, v in zip(convs, values):
            lo, hi = crown[name]
            assert bool((lo.reshape(1, -1) <= v.reshape(len(v), -1)).all() and (v.reshape(len(v), -1) <= hi.reshape(1, -1)).all())
            assert bool((lo >= ibp[name][0]).all() and (hi <= ibp[name][1]).all())
        assert float((crown[convs[1]][1] - crown[convs[1]][0]).mean()) < 0.9 * float((ibp[convs[1]][1] - ibp[convs[1]][0]).mean())
        sparse = engine.crown_node(convs[1], box, crown)
        engine.max_rows_elements = 3e4  # other chunks
        chunked = engine.crown_node(convs[1], box, crown)
        engine.sparse_rows_apply = lambda name: False  # dense passes over whole layers
        dense = engine.crown_node(convs[1], box, crown)
    for a, b, c in zip(sparse, chunked, dense):
        assert torch.allclose(a, c, rtol=1e-9, atol=1e-10) and torch.allclose(b, c, rtol=1e-9, atol=1e-10)
