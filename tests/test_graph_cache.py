"""The graph cache (genbab.model.cache): a cached model is the same model, bound for bound, and
loading it imports neither onnx nor onnx2torch; the CLI's deadline starts at process start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import genbab
from conftest import all_models, first_spec_for, needs_benchmarks
from genbab.model import cache
from genbab.model.files import read_bytes
from genbab.model.loading import load_model

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "specs" / "toy_mlp.onnx"
ROBUST = ROOT / "specs" / "toy_mlp_robust.vnnlib"
GENBAB = ROOT / ".venv" / "bin" / "genbab"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "graphs"
    monkeypatch.setenv("GENBAB_CACHE_DIR", str(folder))
    return folder


def _crown_rows(model, spec_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    spec = genbab.load_spec(spec_path, model.n_inputs, model.n_outputs)
    return genbab.compute_bounds(model, spec.lower[:1], spec.upper[:1], method="crown", C=spec.C[:1])


def test_round_trip_gives_the_same_outputs_and_bounds(cache_dir: Path) -> None:
    fresh = load_model(TOY, use_cache=False)
    raw = read_bytes(TOY)
    entry = cache.store(fresh, raw)
    assert entry is not None and entry.parent == cache_dir and entry.exists()
    cached = cache.load(raw, str(TOY))
    assert cached is not None and cached is not fresh
    x = torch.rand(64, *fresh.input_shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(fresh(x), cached(x))
    for a, b in zip(_crown_rows(fresh, ROBUST), _crown_rows(cached, ROBUST)):
        assert torch.equal(a, b)
    assert genbab.verify(cached, ROBUST, timeout=30).status == genbab.verify(fresh, ROBUST, timeout=30).status == "unsat"


def test_load_model_fills_then_reads_the_cache(cache_dir: Path, monkeypatch) -> None:
    first = load_model(TOY)
    assert len(list(cache_dir.glob("*.pt"))) == 1
    calls = []
    real_load = cache.load
    def recording_load(raw, source):
        hit = real_load(raw, source)
        calls.append(hit is not None)
        return hit

    monkeypatch.setattr(cache, "load", recording_load)
    second = load_model(TOY)
    assert calls == [True] and second is not first and second.graph.op_types() == first.graph.op_types()
    assert not any(type(n.module).__module__.startswith("onnx2torch") for n in second.graph.nodes)
    x = torch.rand(8, *first.input_shape, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first(x), second(x))


def test_key_changes_with_the_bytes_and_bad_entries_are_ignored(cache_dir: Path, capsys) -> None:
    raw = read_bytes(TOY)
    assert cache.cache_key(raw) != cache.cache_key(raw + b"\0")
    cache.store(load_model(TOY, use_cache=False), raw)
    assert cache.load(raw + b"\0", "x") is None  # other bytes: no entry
    entry = next(cache_dir.glob("*.pt"))
    entry.write_bytes(b"torn")
    assert cache.load(raw, "x") is None  # unreadable: ignored with a message, the model loads the long way
    assert "ignoring unreadable graph cache entry" in capsys.readouterr().err
    assert load_model(TOY).n_outputs == 3


def test_cache_off(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("GENBAB_CACHE_DIR", "off")
    assert cache.cache_dir() is None
    assert cache.store(load_model(TOY), read_bytes(TOY)) is None


def _fresh_python(code: str, env: dict) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_cached_load_imports_neither_onnx_nor_onnx2torch(cache_dir: Path) -> None:
    env = {**os.environ, "GENBAB_CACHE_DIR": str(cache_dir)}
    probe = ("import sys, genbab; m = genbab.load_model(%r); "
             "print(m.n_outputs, *(name in sys.modules for name in ('onnx', 'onnx2torch', 'torchvision')))" % str(TOY))
    assert _fresh_python(probe, env).split() == ["3", "True", "True", "False"]  # translated: no torchvision
    assert _fresh_python(probe, env).split() == ["3", "False", "False", "False"]  # cached


def test_help_does_not_import_torch() -> None:
    out = _fresh_python("import sys; sys.argv = ['genbab', '--help']\nimport genbab.cli\n"
                        "try:\n    genbab.cli.main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)",
                        dict(os.environ))
    assert out.strip().endswith("False")


@pytest.mark.skipif(not GENBAB.exists(), reason="the genbab command is not installed in .venv")
def test_prepare_then_verify_uses_the_cache_and_reports_startup(cache_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "GENBAB_CACHE_DIR": str(cache_dir)}
    prep = subprocess.run([str(GENBAB), "prepare", str(TOY)], capture_output=True, text=True, env=env, timeout=120)
    assert prep.returncode == 0 and "cached as" in prep.stdout, prep.stderr
    out = tmp_path / "r.json"
    run = subprocess.run([str(GENBAB), "verify", str(TOY), str(ROBUST), "--timeout", "60", "--quiet",
                          "--json", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("unsat"), run.stderr
    stats = json.loads(out.read_text())["stats"]
    assert 0.0 < stats["startup_s"] < 60.0  # the part of the budget spent before verify started
    bad = subprocess.run([str(GENBAB), "prepare", str(tmp_path / "missing.onnx")], capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode == 2 and "cannot read model file" in bad.stderr


def test_process_age_counts_from_exec() -> None:
    out = _fresh_python("import time; time.sleep(0.6)\nfrom genbab.cli import process_age\nprint(process_age())",
                        dict(os.environ))
    assert 0.6 <= float(out) < 30.0


@needs_benchmarks
@pytest.mark.parametrize("model_path", [m for m in all_models() if first_spec_for(m) is not None],
                         ids=lambda p: p.name)
def test_every_shared_model_is_cached_with_identical_bounds(model_path: Path, cache_dir: Path) -> None:
    fresh = load_model(model_path, use_cache=False)
    raw = read_bytes(model_path)
    assert cache.store(fresh, raw) is not None, "the shared models' graphs are all portable"
    cached = cache.load(raw, str(model_path))
    spec = genbab.load_spec(first_spec_for(model_path), fresh.n_inputs, fresh.n_outputs)
    lo, hi = spec.lower[0], spec.upper[0]
    x = lo + (hi - lo) * torch.rand(16, fresh.n_inputs, generator=torch.Generator().manual_seed(0), dtype=lo.dtype)
    with torch.no_grad():
        assert torch.equal(fresh.forward_flat(x.to(fresh.dtype)), cached.forward_flat(x.to(fresh.dtype)))
    for a, b in zip(genbab.compute_bounds(fresh, lo[None], hi[None], method="ibp", C=spec.C[:1]),
                    genbab.compute_bounds(cached, lo[None], hi[None], method="ibp", C=spec.C[:1])):
        assert torch.equal(a, b)
    if fresh.n_inputs * len(fresh.graph.nodes) < 5_000:  # CROWN where it takes seconds (not vit or the big OPF)
        for a, b in zip(_crown_rows(fresh, first_spec_for(model_path)), _crown_rows(cached, first_spec_for(model_path))):
            assert torch.equal(a, b)


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="vnncomp scripts need .venv")
def test_prepare_instance_fills_the_cache(cache_dir: Path) -> None:
    env = {**os.environ, "GENBAB_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run(["bash", str(ROOT / "vnncomp" / "prepare_instance.sh"), "v1", "test", str(TOY), str(ROBUST)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in cache_dir.glob("*.pt")] == [f"{cache.cache_key(read_bytes(TOY))}.pt"]
