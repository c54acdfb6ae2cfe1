"""A cache of folded graphs, so that a run on a prepared model never imports onnx or onnx2torch.

Loading a model costs ~2-3 s of imports (onnx, onnx2torch, torchvision) before any work; the
folded :class:`~genbab.model.graph.Graph` does not need them. :func:`store` writes the graph of a
loaded :class:`~genbab.model.model.Model` to ``<cache dir>/<key>.pt``, where ``key`` is the
SHA-256 of the model's (gunzipped) bytes and of everything the translation depends on (genbab's
model-pipeline sources, the torch and onnx2torch versions); :func:`load` reads it back.

Node modules whose classes live in onnx2torch (or in genbab's onnx2torch converters) are
replaced by :class:`PortableOp`: the module traced by ``torch.fx`` with the node's constant
arguments baked in, plus the module's plain attributes (``perm``, ``axes``, ``dim``...) that the
bound rules read. A model is cached only when the portable graph reproduces the original one
exactly on sample inputs; every cached load still goes through the translation check against
onnxruntime before any proof (:mod:`genbab.translation_check`).

The cache directory is ``$GENBAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/genbab/graphs``, else
``~/.cache/genbab/graphs``; ``GENBAB_CACHE_DIR=off`` disables it. Entries are pickles: the
directory is created private (0700) and only files owned by the current user are read.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.fx

from genbab.model.graph import Graph, InputRef, Node
from genbab.model.model import Model

FORMAT = 1
FOREIGN_PREFIXES = ("onnx2torch", "genbab.model.converters")
_PIPELINE_SOURCES = ("cache.py", "converters.py", "graph.py", "loading.py", "model.py", "onnx_io.py",
                     "simplify.py", "unroll_rnn.py")
_PLAIN = (bool, int, float, str, type(None))


def cache_dir() -> Path | None:
    """Where entries live, or None when caching is off."""
    env = os.environ.get("GENBAB_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "genbab" / "graphs"


def _pipeline_tag() -> bytes:
    """What a folded graph depends on besides the model bytes."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256(f"format {FORMAT} torch {torch.__version__}".encode())
    for name in _PIPELINE_SOURCES:
        digest.update(name.encode() + b"\0" + (here / name).read_bytes())
    try:
        from importlib.metadata import version

        digest.update(f"onnx2torch {version('onnx2torch')}".encode())
    except Exception:  # metadata unreadable: the sources and torch version still key the entry
        pass
    return digest.digest()


def cache_key(raw: bytes) -> str:
    """SHA-256 (hex) of the pipeline tag and the model bytes."""
    return hashlib.sha256(_pipeline_tag() + raw).hexdigest()


def _unwrap(a: Any) -> Any:
    """The real value behind a traced argument (proxies carry it, see :class:`_ValueProxy`)."""
    if isinstance(a, torch.fx.proxy.Attribute):
        return getattr(_unwrap(a.root), a.attr)
    if isinstance(a, torch.fx.Proxy):
        return a.value
    if isinstance(a, (list, tuple)):
        return type(a)(_unwrap(x) for x in a)
    if isinstance(a, dict):
        return {k: _unwrap(v) for k, v in a.items()}
    return a


class _ValueProxy(torch.fx.Proxy):
    """An fx proxy that also carries the real value it stands for on the sample input.

    Static metadata (dtype, shape, rank, floating-pointness) is answered from that value, which is
    exact because a node's per-sample shapes and dtypes never change; anything that depends on the
    *values* (``bool``, ``item``, ``tolist``) still raises, so such a module is not cached."""

    value: Any = None

    @property
    def shape(self) -> torch.Size:
        return self.value.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.value.dtype

    @property
    def ndim(self) -> int:
        return self.value.ndim

    def size(self, dim: int | None = None) -> Any:
        return self.value.size() if dim is None else self.value.size(dim)

    def dim(self) -> int:
        return self.value.dim()

    def numel(self) -> int:
        return self.value.numel()

    def is_floating_point(self) -> bool:
        return self.value.is_floating_point()

    def __len__(self) -> int:
        return len(self.value)


class _ConcreteTracer(torch.fx.Tracer):
    """fx tracing that evaluates every recorded op on real sample values as it goes.

    torch's own modules stay leaves (they pickle by reference); foreign modules are traced
    through. Numpy scalars in arguments become Python scalars (fx cannot store them)."""

    def __init__(self, samples: dict[str, Any]) -> None:
        super().__init__()
        self.samples = samples

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        return type(m).__module__.startswith("torch.nn") or super().is_leaf_module(m, qualname)

    def create_arg(self, a: Any) -> Any:
        import numpy as np

        if isinstance(a, np.generic):
            a = a.item()
        return super().create_arg(a)

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        return _ValueProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        real_args, real_kwargs = _unwrap(args), _unwrap(kwargs)
        if kind == "placeholder":
            value = self.samples[target]
        elif kind == "get_attr":
            value = _fetch(self.root, target)
        elif kind == "call_module":
            value = self.root.get_submodule(target)(*real_args, **real_kwargs)
        elif kind == "call_function":
            value = target(*real_args, **real_kwargs)
        elif kind == "call_method":
            value = getattr(real_args[0], target)(*real_args[1:], **real_kwargs)
        else:
            value = None
        proxy.value = value
        return proxy


def _fetch(root: Any, qualname: str) -> Any:
    for part in qualname.split("."):
        root = getattr(root, part)
    return root


def _is_fed(a: Any) -> bool:
    """Whether a node argument is passed to the portable op at call time (input values, and the
    floating constants, which the bound engine casts to its dtype) rather than baked in."""
    return isinstance(a, InputRef) or (isinstance(a, torch.Tensor) and a.is_floating_point())


class _Bound(torch.nn.Module):
    """``module`` with the node's non-fed arguments fixed; subclasses made by :func:`_bound_class`
    give it a ``forward(self, v0, ..., vn)`` over the fed ones (fx needs a fixed arity)."""

    def __init__(self, module: torch.nn.Module, node: Node) -> None:
        super().__init__()
        self.inner = module
        self.template = node.args
        self.kw_template = node.kwargs
        self.slots = [i for i, a in enumerate(node.args) if _is_fed(a)]
        self.keys = [k for k, v in node.kwargs.items() if _is_fed(v)]

    def call_with(self, values: tuple) -> Any:
        args = list(self.template)
        for slot, value in zip(self.slots, values):
            args[slot] = value
        kwargs = dict(self.kw_template)
        for key, value in zip(self.keys, values[len(self.slots):]):
            kwargs[key] = value
        return self.inner(*args, **kwargs)


def _bound_class(n: int) -> type:
    names = ", ".join(f"v{i}" for i in range(n))
    namespace: dict = {}
    exec(f"def forward(self, {names}):\n    return self.call_with(({names}{',' if n else ''}))\n", namespace)  # noqa: S102
    return type(f"_Bound{n}", (_Bound,), {"forward": namespace["forward"]})


def _compile(src: str, fx_globals: dict[str, Any]) -> Any:
    import importlib

    namespace = {k: importlib.import_module(v[1]) if v[0] == "module" else v[1] for k, v in fx_globals.items()}
    exec(compile(src, "<genbab portable op>", "exec"), namespace)  # noqa: S102
    return namespace["forward"]


class PortableOp(torch.nn.Module):
    """A node module that needs no onnx2torch to unpickle.

    ``forward(*args, **kwargs)`` takes the node's arguments as :meth:`Node.call` passes them,
    keeps the fed ones (positions ``slots``, keyword names ``keys``: input values and floating
    constants) and runs the traced code on them; other constants are baked into ``body`` (as
    buffers, so ``.to(device)`` moves them). The original module's plain attributes (``perm``,
    ``axes``...) are attributes of this object too, for the bound rules that read them.
    """

    def __init__(self, gm: torch.fx.GraphModule, slots: tuple[int, ...], keys: tuple[str, ...],
                 attrs: dict[str, Any], type_name: str) -> None:
        import types

        super().__init__()
        body = torch.nn.Module()
        for name, child in gm.named_children():
            body.add_module(name, child)
        for name, value in vars(gm).items():
            if isinstance(value, torch.Tensor) and not name.startswith("_parameters"):
                body.register_buffer(name, value)
        for name, buf in gm.named_buffers(recurse=False):
            body.register_buffer(name, buf)
        for name, param in gm.named_parameters(recurse=False):
            body.register_parameter(name, param)
        code = gm.graph.python_code(root_module="self")
        self.body = body
        self.src = code.src
        self.fx_globals = {k: ("module", v.__name__) if isinstance(v, types.ModuleType) else ("value", v)
                           for k, v in code.globals.items()}
        self.slots, self.keys, self.type_name = slots, keys, type_name
        for name, value in attrs.items():
            setattr(self, name, value)
        self._fn = _compile(self.src, self.fx_globals)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(self.body, *[args[i] for i in self.slots], *[kwargs[k] for k in self.keys])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_fn", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._fn = _compile(self.src, self.fx_globals)


def _is_foreign(module: Any) -> bool:
    return isinstance(module, torch.nn.Module) and type(module).__module__.startswith(FOREIGN_PREFIXES)


_MODULE_INTERNALS = frozenset(vars(torch.nn.Module()))


def _plain_attrs(module: torch.nn.Module) -> dict[str, Any]:
    """The module's attributes that are plain data (numbers, strings, dtypes and tuples of them)."""
    def plain(v: Any) -> bool:
        return isinstance(v, (*_PLAIN, torch.dtype)) or (isinstance(v, (list, tuple)) and all(plain(x) for x in v))

    return {k: v for k, v in vars(module).items() if k not in _MODULE_INTERNALS and plain(v)}


def _has_tensor_state(module: torch.nn.Module) -> bool:
    return (any(True for _ in module.parameters()) or any(True for _ in module.buffers())
            or any(isinstance(v, torch.Tensor) for v in vars(module).values()))


def portable_node(node: Node, values: dict[str, Any]) -> Node:
    """``node`` with a foreign module replaced by a :class:`PortableOp` (others unchanged);
    ``values`` holds the real values of the node's inputs on a sample (keyed by input name)."""
    if not _is_foreign(node.module):
        return node
    if _has_tensor_state(node.module):  # bound rules may read its weights as attributes: not portable
        raise ValueError(f"{type(node.module).__name__} holds tensors")
    n_fed = sum(_is_fed(a) for a in node.args) + sum(_is_fed(v) for v in node.kwargs.values())
    bound = _bound_class(n_fed)(node.module, node)
    inputs = [values[name] for name in node.inputs]
    real = lambda a: inputs[a.index] if isinstance(a, InputRef) else a  # noqa: E731
    fed = [real(node.args[i]) for i in bound.slots] + [real(node.kwargs[k]) for k in bound.keys]
    tracer = _ConcreteTracer({f"v{i}": v for i, v in enumerate(fed)})
    gm = torch.fx.GraphModule(bound, tracer.trace(bound))
    op = PortableOp(gm, tuple(bound.slots), tuple(bound.keys), _plain_attrs(node.module), type(node.module).__name__)
    return Node(**{**node.__dict__, "module": op})


def portable_graph(graph: Graph) -> Graph:
    """A copy of ``graph`` whose nodes need no onnx2torch (raises when a module cannot be traced).
    Each node is traced on the values the graph computes for a fixed sample input."""
    x = torch.full(graph.input_shape, 0.5, dtype=graph.dtype)
    values: dict[str, Any] = {graph.input_name: x}
    nodes = []
    with torch.no_grad():
        for node in graph.nodes:
            nodes.append(portable_node(node, values))
            values[node.name] = node.call([values[i] for i in node.inputs])
    return Graph(graph.input_name, graph.input_shape, graph.dtype, nodes, graph.output_name, graph.output_shape)


def _same_outputs(a: Graph, b: Graph, samples: int = 3) -> bool:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(samples):
            x = (torch.rand(a.input_shape, generator=gen, dtype=torch.float64) * 2 - 1).to(a.dtype)
            ya, yb = a.forward_one(x), b.forward_one(x)
            if ya.shape != yb.shape or not torch.equal(ya.nan_to_num(), yb.nan_to_num()):
                return False
    return True


def store(model: Model, raw: bytes) -> Path | None:
    """Write ``model``'s portable graph under its key; None (nothing written) when the cache is off,
    the graph cannot be made portable or does not reproduce the original, or the write fails."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        graph = portable_graph(model.graph)
    except Exception:  # an op fx cannot trace: this model is simply not cached
        return None
    if not _same_outputs(model.graph, graph):
        return None
    entry = {"format": FORMAT, "graph": graph, "input_name": model.input_name,
             "onnx_input_shape": model.onnx_input_shape, "np_dtype": model.np_dtype.str,
             "original_names": model.original_names, "use_vmap": model._use_vmap}
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = folder / f"{cache_key(raw)}.pt"
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            torch.save(entry, fh)
        os.replace(tmp, target)  # atomic: a concurrent reader sees the old entry or the new one
        return target
    except Exception:  # read-only home, disk full, a module that does not pickle: run uncached
        try:
            os.unlink(tmp)
        except Exception:
            pass
        return None


def load(raw: bytes, source: str) -> Model | None:
    """The cached Model for these model bytes, or None (no entry, another user's file, unreadable)."""
    folder = cache_dir()
    if folder is None:
        return None
    path = folder / f"{cache_key(raw)}.pt"
    try:
        info = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        return None
    try:
        import numpy as np

        entry = torch.load(path, weights_only=False, map_location="cpu")
        if entry.get("format") != FORMAT:
            return None
        model = Model(entry["graph"], raw, entry["input_name"], tuple(entry["onnx_input_shape"]),
                      np.dtype(entry["np_dtype"]), source, entry["original_names"])
        model._use_vmap = bool(entry["use_vmap"])
        return model
    except Exception as err:  # a torn or foreign file: ignore it, the model loads the long way
        print(f"genbab: ignoring unreadable graph cache entry {path} ({type(err).__name__})", file=sys.stderr)
        return None
