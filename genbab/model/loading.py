"""``load_model``: from an ONNX file to a :class:`~genbab.model.model.Model`.

Pipeline: read (gz-aware) -> the graph cache (:mod:`genbab.model.cache`; a hit ends here, with
neither onnx nor onnx2torch imported) -> fix the input shape -> name nodes -> upgrade opsets
older than 11 -> unroll LSTM/GRU into primitive ops -> fold constant subgraphs into initializers
and make empty optional inputs and SAME_* auto_pad explicit -> check every op has a translator (one error
listing all that do not) -> ``onnx2torch.convert`` -> fold constants and shape arithmetic into a
Graph -> store it in the cache.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import types
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from genbab.errors import GenbabError, ModelError, UnsupportedOpError
from genbab.model import cache
from genbab.model.files import read_bytes
from genbab.model.model import Model

if TYPE_CHECKING:
    import onnx

    from genbab.model import onnx_io

# onnx2torch's Slice indexes with a list; torch warns about a future change. Our tests pin the
# translated values against onnxruntime for every shared model, so the warning is noise here.
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}


def load_model(path: str | Path, use_cache: bool = True) -> Model:
    """Load an ONNX model file (``.onnx`` or ``.onnx.gz``) into a batched, verification-ready Model.

    ``use_cache``: read the folded graph from the graph cache when an entry for these bytes
    exists, and store it there after a translation (``GENBAB_CACHE_DIR=off`` turns both off)."""
    raw = read_bytes(path)
    if use_cache:
        cached = cache.load(raw, str(path))
        if cached is not None:
            return cached
    result = translate_model(raw, path)
    if use_cache:
        cache.store(result, raw)
    return result


def translate_model(raw: bytes, path: str | Path) -> Model:
    """The uncached pipeline: parse ``raw`` with onnx, translate with onnx2torch, fold."""
    from onnx import helper

    from genbab.model import onnx_io
    from genbab.model.graph import ConstantOutputError, build_graph

    model = onnx_io.parse_onnx(raw, path)
    info = onnx_io.model_input(model)
    prepared, original_names = prepare(model, info)
    gm = translate(prepared)
    attrs = {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute} for n in prepared.graph.node}
    op_types = {n.name: n.op_type for n in prepared.graph.node}
    dtype = TORCH_DTYPES.get(info.dtype.name)
    if dtype is None:
        raise ModelError(f"{path}: unsupported input dtype {info.dtype}")
    try:
        with torch.no_grad():
            graph = build_graph(gm.to(dtype), info.shape, dtype, op_types, attrs, original_names)
    except ConstantOutputError as err:  # with what a replay needs (genbab.constant_output decides it)
        raise ConstantOutputError(str(err), err.value, raw, info.name, info.shape, info.dtype, str(path)) from None
    except GenbabError:
        raise
    except Exception as err:
        raise ModelError(f"{path}: cannot evaluate translated model ({type(err).__name__}: {err})") from None
    result = Model(graph, raw, info.name, info.shape, info.dtype, str(path), original_names)
    result.check_batching()
    return result


def prepare(model: onnx.ModelProto, info: onnx_io.InputInfo) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Static shapes, identifier node names, an opset onnx2torch translates, no recurrent ops,
    constant subgraphs folded into initializers, empty optional inputs and SAME_* padding made explicit."""
    import onnx

    from genbab.model import onnx_io

    model = onnx.ModelProto.FromString(model.SerializeToString())
    onnx_io.fix_input_shape(model, info)
    if onnx_io.default_opset(model) < onnx_io.MIN_TRANSLATABLE_OPSET:
        model = onnx_io.upgrade_opset(model)
    if any(n.op_type in ("LSTM", "GRU") for n in model.graph.node):
        from genbab.model.unroll_rnn import unroll_recurrent_ops

        model = unroll_recurrent_ops(model)
    model = onnx_io.fold_constants(model, info)
    onnx_io.normalize_optional_inputs(model, info)
    model = onnx_io.explicit_auto_pad(model, info)
    onnx_io.separate_multi_output_results(model)
    original_names = onnx_io.name_nodes(model)
    check_supported(model, original_names)
    return onnx_io.annotate_shapes_by_running(model, info), original_names


def check_supported(model: onnx.ModelProto, original_names: dict[str, str]) -> None:
    """Raise one UnsupportedOpError naming every op type (and its nodes) that nothing translates."""
    with _torchvision_deferred():
        from onnx2torch.node_converters.registry import get_converter

        from genbab.model.converters import register_converters
    register_converters()
    versions = {imp.domain or "": imp.version for imp in model.opset_import}
    missing: dict[str, list[str]] = {}
    for node in model.graph.node:
        try:
            get_converter(node.op_type, versions.get(node.domain or "", 1), node.domain or "")
        except NotImplementedError:
            missing.setdefault(node.op_type, []).append(original_names.get(node.name, node.name))
    if missing:
        parts = [f"{op} (nodes: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" for op, names in sorted(missing.items())]
        raise UnsupportedOpError("unsupported ONNX operators: " + "; ".join(parts))


def translate(model: onnx.ModelProto) -> torch.fx.GraphModule:
    """``onnx2torch.convert`` with its failures turned into one-line ModelErrors."""
    with _torchvision_deferred():
        import onnx2torch

        from genbab.model.converters import register_converters
    register_converters()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("onnx2torch").setLevel(logging.ERROR)
            return onnx2torch.convert(model).eval()
    except GenbabError:
        raise
    except NotImplementedError as err:
        raise UnsupportedOpError(f"cannot translate model: {err}") from None
    except Exception as err:
        raise ModelError(f"cannot translate model ({type(err).__name__}: {err})") from None


@contextlib.contextmanager
def _torchvision_deferred():
    """Import onnx2torch without importing torchvision (~1.5 s, torch._dynamo included).

    onnx2torch imports torchvision only for its NMS and RoiAlign converters, ops genbab never
    bounds. While this context is open, ``torchvision`` and ``torchvision.ops`` resolve to
    placeholders whose functions import the real ``torchvision.ops`` when first *called*; the
    placeholders leave ``sys.modules`` afterwards, so a later ``import torchvision`` is the real
    one. Does nothing when torchvision is already imported."""
    if "torchvision" in sys.modules:
        yield
        return

    def deferred(name: str):
        if name.startswith("__"):  # module protocol (__file__, __spec__...): a plain missing attribute
            raise AttributeError(name)

        def call(*args, **kwargs):
            import importlib

            return getattr(importlib.import_module("torchvision.ops"), name)(*args, **kwargs)
        call.__name__ = name
        return call

    ops = types.ModuleType("torchvision.ops")
    ops.__getattr__ = deferred  # PEP 562: torchvision.ops.<name> is a deferred function
    top = types.ModuleType("torchvision")
    top.ops = ops
    top.__path__ = []  # a package, so that ``from torchvision.ops import x`` resolves
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = top, ops
    try:
        yield
    finally:
        for name in ("torchvision", "torchvision.ops"):
            if sys.modules.get(name) in (top, ops):
                del sys.modules[name]
