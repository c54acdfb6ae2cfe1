"""The bound engine: interval (IBP) and linear (CROWN) bounds of a graph over input boxes.

``BoundEngine(graph, config)`` prepares the graph once (rewrites of :mod:`genbab.model.simplify`, a
bound rule per node, copies of the constants in the config's dtype on its device). Then, for a
batch of boxes:

- :meth:`interval_bounds`: IBP through every node;
- :meth:`intermediate_bounds`: bounds of every node, CROWN (intersected with IBP) for nodes
  that feed a nonlinearity, IBP elsewhere;
- :meth:`bound_rows`: lower bounds of linear functions ``C y`` of the output, given the
  intermediate bounds and, optionally, relaxation parameters (alpha).

Bounds are computed in float64 by default (float32 on request): each relaxation is sound in that
dtype, and the rounding of the linear algebra is accounted for by rigorous error terms
(:mod:`genbab.bounds.rounding`): every backward pass subtracts a bound of its own rounding error
from its bias, and every interval step is widened by its own. The config
(:class:`~genbab.bounds.config.EngineConfig`) also names the kernel backend: with ``"triton"``
the relaxations (:meth:`BoundEngine.relax`), the elementwise backward steps and the
concretisation run the kernels of :mod:`genbab.kernels`.
"""

from __future__ import annotations

import copy
import math
import time

import torch

from genbab.bounds.affine import AffineMap, monotone_signs, rounding_terms, simplex_backward
from genbab.bounds.box import Box, concretize_lower
from genbab.bounds.config import EngineConfig
from genbab.bounds.kernel_backend import relax_lines
from genbab.bounds import forward, rounding
from genbab.bounds.nonlinear import (bilinear_backward, elementwise_backward, matmul_backward, matmul_expand,
                                     matmul_interval, product_interval)
from genbab.model.graph import Graph, InputRef, Node
from genbab.model.simplify import simplify_for_bounds
from genbab.ops.registry import NodeRule, rule_for
from genbab.ops.relaxation import Relaxation

Bounds = dict[str, tuple[torch.Tensor, torch.Tensor]]


class BoundsTimeout(Exception):
    """The deadline passed in the middle of a bound computation."""


Params = dict[str, dict[str, torch.Tensor]]


def graph_in_dtype(graph: Graph, dtype: torch.dtype, device: torch.device | str) -> Graph:
    """A deep copy of ``graph`` with floating constants and module parameters in ``dtype`` on ``device``."""
    graph = copy.deepcopy(graph)
    for i, node in enumerate(graph.nodes):
        if isinstance(node.module, torch.nn.Module):
            node.module.to(device=device, dtype=dtype).requires_grad_(False)
        cast = lambda a: a.to(device=device, dtype=dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else (
            a.to(device) if isinstance(a, torch.Tensor) else a)
        graph.nodes[i] = Node(**{**node.__dict__, "args": tuple(cast(a) for a in node.args),
                                 "kwargs": {k: cast(v) for k, v in node.kwargs.items()}})
    graph.dtype = dtype
    return graph


NARROW = 2.0**-40  # a neuron narrower than this times (1 + |value|) in every box keeps its interval bounds


class BoundEngine:
    """Bounds of one graph; holds per-node rules and cached affine maps, no per-query state."""

    def __init__(self, graph: Graph, config: EngineConfig = EngineConfig(), max_rows_elements: float = 2e7):
        self.config = config
        self.device, self.dtype, self.backend = config.device, config.dtype, config.backend
        if self.device.type == "cuda":  # TF32 (u = 2^-11) would void the float32 rounding ledger
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.graph = graph_in_dtype(simplify_for_bounds(graph), self.dtype, self.device)
        self.nodes = self.graph.nodes
        self.index = {n.name: i for i, n in enumerate(self.nodes)}
        self.rules: dict[str, NodeRule] = {n.name: rule_for(n) for n in self.nodes}
        self.shapes = {self.graph.input_name: self.graph.input_shape}
        self.shapes.update({n.name: n.out_shape for n in self.nodes})
        self.needs_bounds = {i for n in self.nodes if self.rules[n.name].kind != "affine" for i in n.inputs}
        self.max_rows_elements = max_rows_elements
        self._affine: dict[str, AffineMap] = {}
        self._affine_info: dict[tuple, object] = {}  # sparse Jacobians and probes, see sparse_rows_apply
        self.crown_targets = self._crown_targets()
        self._magnitudes: dict[tuple, tuple] = {}  # affine image magnitudes, see affine_magnitude
        self.terms = {n.name: rounding_terms(n, [self.shapes[i] for i in n.inputs], n.out_shape)
                      for n in self.nodes if self.rules[n.name].kind == "affine"}  # (forward, backward)

    # ----------------------------------------------------------------- helpers
    def _crown_targets(self, max_neurons: int = 4096, max_work: float = 1.2e9) -> set[str]:
        """Nodes whose bounds CROWN computes: the inputs of nonlinear nodes, except that a large one
        made by a single-input affine node (softmax's pairwise differences, say) hands the job to
        that node's input, and its own bounds follow by the (exact) interval step. Nodes still
        larger than ``max_neurons`` keep interval bounds unless their backward work (see
        :meth:`crown_work`: ``2n`` rows times the values of the backward cone) is at most ``max_work``
        (a convolution layer of a small network); a node larger than its one input hands the job
        on regardless."""
        producers = {n.name: n for n in self.nodes}
        targets = set()
        for name in self.needs_bounds:
            previous = None
            while name != previous:  # alternate both hand-overs until neither applies
                previous = name
                while name in producers and self._interval_exact(producers[name]):
                    name = producers[name].inputs[0]
                while (name in producers and math.prod(self.shapes[name]) > max_neurons
                       and self.rules[name].kind == "affine" and len(producers[name].inputs) == 1
                       and (self._too_costly(name, max_work) or self._expands(producers[name]))):
                    name = producers[name].inputs[0]
            if math.prod(self.shapes[name]) <= max_neurons or (name in producers and not self._too_costly(name, max_work)):
                targets.add(name)  # larger ones keep their interval bounds (CROWN would cost 2n passes)
        return targets

    def _too_costly(self, name: str, max_work: float, max_sparse_neurons: int = 65536) -> bool:
        """Is CROWN on the large node ``name`` too costly: dense passes doing more than ``max_work``
        (:meth:`crown_work`), or, on the rows' supports (:meth:`sparse_rows_apply`), more than
        ``max_sparse_neurons`` neurons?"""
        if self.sparse_rows_apply(name):
            return math.prod(self.shapes[name]) > max_sparse_neurons
        return self.crown_work(name) > max_work

    def _expands(self, node: Node) -> bool:
        """Has the single-input ``node`` more values than its input (pairwise differences, upsampling)?"""
        return math.prod(self.shapes[node.name]) > math.prod(self.shapes[node.inputs[0]])

    def backward_cone(self, name: str) -> list[str]:
        """The nodes a backward pass from ``name`` visits (``name`` and its ancestors, graph order)."""
        cone, todo = {name}, [name]
        while todo:
            for i in self.nodes[self.index[todo.pop()]].inputs:
                if i in self.index and i not in cone:
                    cone.add(i)
                    todo.append(i)
        return sorted(cone, key=self.index.__getitem__)

    def _widest_in(self, names: list[str]) -> int:
        """Values per row of the widest backward tensor over ``names`` (a node, or the products
        ``x_ij y_jk`` of a MatMul of two variables)."""
        widest = [math.prod(self.shapes[n]) for n in names] + [math.prod(self.shapes[self.graph.input_name])]
        for n in names:
            node = self.nodes[self.index[n]]
            product = self.rules[n].product
            if product is not None and product.contraction:
                widest.append(math.prod(self.shapes[n]) * self.shapes[node.inputs[0]][-1])
        return max(widest)

    def crown_work(self, name: str) -> int:
        """``2n * sum_k |z_k|`` over the backward cone of ``name`` (``n`` neurons): the values the
        CROWN passes of :meth:`crown_node` write, a proxy of their cost."""
        return 2 * math.prod(self.shapes[name]) * sum(
            math.prod(self.shapes[n]) for n in self.backward_cone(name) + [self.graph.input_name])

    def _interval_exact(self, node: Node) -> bool:
        """Is CROWN on ``node`` never tighter than the interval step from its one input's bounds?

        True for element permutations (reshapes, transposes: CROWN rows map one to one) and
        monotone elementwise ops: CROWN's lower bound of ``h(z_i)`` is a relaxation line evaluated
        at a bound of ``z_i`` at least as wide as ``[l_i, u_i]``, hence at most ``min h`` on it."""
        if len(node.inputs) != 1:
            return False
        rule = self.rules[node.name]
        if rule.kind == "elementwise":
            return rule.op.traits.monotone is not None
        return rule.kind == "affine" and rule.affine.one_to_one

    def affine(self, node: Node) -> AffineMap:
        if node.name not in self._affine:
            shapes = [self.shapes[i] for i in node.inputs]
            self._affine[node.name] = AffineMap(node, shapes, self.dtype, self.device)
        return self._affine[node.name]

    def box(self, lower: torch.Tensor, upper: torch.Tensor) -> Box:
        """A Box in the engine's dtype from ``[batch, ...]`` bounds (flat or shaped), rounded outward."""
        shape = (lower.shape[0], *self.graph.input_shape)
        lower, upper = lower.reshape(shape).to(self.device), upper.reshape(shape).to(self.device)
        return Box(rounding.to_dtype_down(lower, self.dtype), rounding.to_dtype_up(upper, self.dtype))

    def relax(self, op, lo: torch.Tensor, hi: torch.Tensor, params: dict | None = None):
        """The lines of the elementwise ``op`` on ``[lo, hi]`` on this engine's backend."""
        return relax_lines(op, lo, hi, params, self.backend)

    def operand_bounds(self, node: Node, bounds: Bounds) -> tuple[list, list]:
        """Lower and upper bounds of each of the node's inputs, in ``node.inputs`` order."""
        return [bounds[i][0] for i in node.inputs], [bounds[i][1] for i in node.inputs]

    def bilinear_operands(self, node: Node, bounds: Bounds):
        """``(lx, ux, ly, uy)`` of the two factors of a product node (batched shapes)."""
        (a, b) = [arg for arg in node.args if isinstance(arg, InputRef)][:2]
        lx, ux = bounds[node.inputs[a.index]]
        ly, uy = bounds[node.inputs[b.index]]
        return lx, ux, ly, uy, a.index, b.index

    # ----------------------------------------------------------------- IBP
    def interval_step(self, node: Node, bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval image of one node from its inputs' intervals."""
        rule = self.rules[node.name]
        if rule.kind == "affine":
            lows, highs = self.operand_bounds(node, bounds)
            lo, hi = self.affine(node).interval(lows, highs)
            forward, _ = self.terms[node.name]
            if forward == 0:  # data movement: the image is exact
                return lo, hi
            n = math.prod(self.shapes[node.name])
            g, tiny = rounding.gamma(forward + 4, lo.dtype), rounding.tiny_term(n, lo.dtype)
            signs = monotone_signs(node)
            if signs is None:  # centre/radius: its error scales with every input's magnitude
                v = self.affine_magnitude(node, [(l_, h_) for l_, h_ in zip(lows, highs)])
                return rounding.widen(lo, hi, g * v + tiny)
            # corner images f(low_in), f(high_in): each errs with the magnitudes of its own corner
            low_in = [l_ if sg > 0 else h_ for sg, l_, h_ in zip(signs, lows, highs)]
            high_in = [h_ if sg > 0 else l_ for sg, l_, h_ in zip(signs, lows, highs)]
            v_lo = self.affine_magnitude(node, [(t, t) for t in low_in])
            v_hi = self.affine_magnitude(node, [(t, t) for t in high_in])
            return rounding.widen(lo, hi, g * v_lo + tiny)[0], rounding.widen(lo, hi, g * v_hi + tiny)[1]
        if rule.kind == "elementwise":
            lo, hi = bounds[node.inputs[0]]
            return rule.op.interval(lo, hi)  # the op's own interval is rounded outward
        lx, ux, ly, uy, _, _ = self.bilinear_operands(node, bounds)
        mx, my = rounding.magnitude(lx, ux), rounding.magnitude(ly, uy)
        if rule.product.contraction:
            lo, hi = matmul_interval(lx, ux, ly, uy)
            slack = rounding.gamma(mx.shape[-1] + 2, lo.dtype) * (mx @ my)
        else:
            lo, hi = product_interval(lx, ux, ly, uy)
            slack = rounding.gamma(2, lo.dtype) * (mx * my)
        return rounding.widen(lo, hi, slack.clamp(max=torch.finfo(lo.dtype).max))

    def affine_magnitude(self, node: Node, inputs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``v = |L| m + |c|`` ``[B, *out]`` of the affine ``node`` for its inputs' magnitudes
        ``m = max(|l|, |u|)`` (``inputs``: one ``(l, u)`` per input): the largest magnitude of its
        interval image of ``[-m, m]`` (that image is ``c +- |L| m`` exactly). Cached per input
        tensors (kept alive with the entry, so their ids stay unique)."""
        key = (node.name, *(id(t) for pair in inputs for t in pair))
        hit = self._magnitudes.get(key)
        if hit is not None:
            return hit[0]
        ms = [rounding.magnitude(lo, hi) for lo, hi in inputs]
        with torch.no_grad():
            lo, hi = self.affine(node).interval([-m for m in ms], ms)
            v = rounding.magnitude(lo.detach(), hi.detach())
        if len(self._magnitudes) > 8 * len(self.nodes) + 64:
            self._magnitudes.clear()
        self._magnitudes[key] = (v, inputs)
        return v

    def interval_bounds(self, box: Box) -> Bounds:
        """IBP bounds of every node."""
        bounds: Bounds = {self.graph.input_name: (box.lower, box.upper)}
        for node in self.nodes:
            bounds[node.name] = self.interval_step(node, bounds)
        return bounds

    # ----------------------------------------------------------------- CROWN
    def intermediate_bounds(self, box: Box, method: str = "crown", deadline: float | None = None,
                            clamps: Bounds | None = None, base: Bounds | None = None) -> Bounds:
        """Bounds of every node: CROWN for inputs of nonlinear nodes (intersected with IBP).

        ``clamps`` (branch and bound): per node, interval constraints ``[B, *shape]`` that the
        node's value satisfies on the domain; they are intersected with the computed bounds
        before later nodes use them. ``base``: bounds valid on a superset of every box (a BaB
        root's), intersected in too. With ``method="ibp"`` and a ``base`` this is the cheap
        refresh of branch and bound. Raises :class:`BoundsTimeout` when ``deadline`` passes."""
        bounds: Bounds = {self.graph.input_name: (box.lower, box.upper)}
        forms = None
        if method == "forward":  # symbolic intervals over the free input coordinates, if few
            free = forward.free_dims(box)
            if int(free.sum(dim=1).max()) > forward.MAX_FREE:
                method = "crown"
            else:
                forms = {self.graph.input_name: forward.input_form(box, free)}
                last_use = self._last_use()
        for i, node in enumerate(self.nodes):
            if deadline is not None and forms is not None and time.monotonic() >= deadline:
                raise BoundsTimeout(f"deadline passed while bounding {node.name}")
            lo, hi = self.interval_step(node, bounds)
            if base is not None:
                lo, hi = torch.maximum(lo, base[node.name][0]), torch.minimum(hi, base[node.name][1])
            if forms is not None:
                form = forward.node_form(self, node, forms, bounds, (lo, hi))
                f_lo, f_hi = form.bounds()
                lo, hi = torch.maximum(lo, f_lo), torch.minimum(hi, f_hi)
            if method == "crown" and node.name in self.crown_targets and not self._exact_by_ibp(node):
                c_lo, c_hi = self.crown_node(node.name, box, bounds, deadline, current=(lo, hi))
                lo, hi = torch.maximum(lo, c_lo), torch.minimum(hi, c_hi)
            if clamps is not None and node.name in clamps:
                lo, hi = torch.maximum(lo, clamps[node.name][0]), torch.minimum(hi, clamps[node.name][1])
            bounds[node.name] = (lo, hi)
            if forms is not None:
                forms[node.name] = form if form.G is not None else forward.Form(None, lo, hi)
                for name in node.inputs:  # a form nobody reads later is dropped
                    if last_use.get(name, -1) <= i:
                        forms.pop(name, None)
        return bounds

    def _last_use(self) -> dict[str, int]:
        """Per value, the index of the last node reading it."""
        if not hasattr(self, "_last_use_cache"):
            self._last_use_cache = {name: i for i, n in enumerate(self.nodes) for name in n.inputs}
        return self._last_use_cache

    def _exact_by_ibp(self, node: Node) -> bool:
        """An affine node reading only the graph input: IBP with its Jacobian is already exact."""
        return self.rules[node.name].kind == "affine" and set(node.inputs) == {self.graph.input_name}

    def crown_node(self, name: str, box: Box, bounds: Bounds, deadline: float | None = None,
                   current: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CROWN lower and upper bounds of node ``name`` (rows ``+e_i`` and ``-e_i``), in row chunks.

        A chunk's widest backward tensor (a node of the backward cone of ``name``, or the products
        ``x_ij y_jk`` of a MatMul of two variables) holds at most ``min(max_rows_elements, 2e6)``
        numbers: 16 MB in float64 stays in the allocator's heap and the caches; larger chunks cost
        page faults, not speed. Each chunk's rows are made on the fly (no ``2n x n`` identity)."""
        if self.sparse_rows_apply(name):
            return self._crown_node_sparse(name, box, bounds, deadline)
        shape = self.shapes[name]
        n = math.prod(shape)
        if current is not None:  # rows only for neurons some box leaves wider than rounding noise
            lo, hi = current
            tol = NARROW * (1 + rounding.magnitude(lo, hi))
            wide = torch.nonzero(((hi - lo) > tol).reshape(box.batch, n).any(dim=0)).flatten()
            if len(wide) < n:
                return self._crown_rows(name, box, bounds, deadline, wide)
        widest = self._widest_in(self.backward_cone(name))
        chunk = max(1, int(min(self.max_rows_elements, 2e6) // (box.batch * widest)))
        out = []
        for start in range(0, 2 * n, chunk):
            if deadline is not None and time.monotonic() >= deadline:
                raise BoundsTimeout(f"deadline passed while bounding {name}")
            A = self.unit_rows(start, min(start + chunk, 2 * n), n).reshape(1, -1, *shape)
            out.append(self.bound_linear(name, A.expand(box.batch, -1, *shape), box, bounds))
        lb = torch.cat(out, dim=1)
        return lb[:, :n].reshape(box.batch, *shape), (-lb[:, n:]).reshape(box.batch, *shape)

    def _crown_rows(self, name: str, box: Box, bounds: Bounds, deadline: float | None,
                    wide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CROWN bounds of the neurons ``wide`` ``[m]`` of ``name`` (rows ``+e_i``, ``-e_i``); the
        others get ``-inf`` / ``+inf`` (their interval bounds stand)."""
        shape, n, B, m = self.shapes[name], math.prod(self.shapes[name]), box.batch, len(wide)
        lo = torch.full((B, n), -torch.inf, dtype=self.dtype, device=self.device)
        hi = torch.full((B, n), torch.inf, dtype=self.dtype, device=self.device)
        if m:
            widest = self._widest_in(self.backward_cone(name))
            chunk = max(1, int(min(self.max_rows_elements, 2e6) // (B * widest)))
            cols = torch.cat([wide, wide])
            signs = torch.cat([torch.ones(m), -torch.ones(m)]).to(self.dtype).to(self.device)
            out = []
            for start in range(0, 2 * m, chunk):
                if deadline is not None and time.monotonic() >= deadline:
                    raise BoundsTimeout(f"deadline passed while bounding {name}")
                stop = min(start + chunk, 2 * m)
                rows = torch.zeros(stop - start, n, dtype=self.dtype, device=self.device)
                rows[torch.arange(stop - start, device=self.device), cols[start:stop]] = signs[start:stop]
                A = rows.reshape(1, -1, *shape).expand(B, -1, *shape)
                out.append(self.bound_linear(name, A, box, bounds))
            lb = torch.cat(out, dim=1)
            lo[:, wide], hi[:, wide] = lb[:, :m], -lb[:, m:]
        return lo.reshape(B, *shape), hi.reshape(B, *shape)

    def unit_rows(self, first: int, last: int, n: int) -> torch.Tensor:
        """Rows ``first..last-1`` ``[last - first, n]`` of ``[I; -I]`` (``2n x n``)."""
        k = torch.arange(first, last, device=self.device)
        rows = torch.zeros(last - first, n, dtype=self.dtype, device=self.device)
        rows[torch.arange(last - first, device=self.device), k % n] = torch.where(k < n, 1.0, -1.0).to(self.dtype)
        return rows

    # ------------------------------------------------ CROWN rows on their support (convolutions)
    def chain_to_input(self, name: str) -> list[Node] | None:
        """The nodes from ``name`` back to the graph input (``name`` first) when each one has one
        input and is affine or elementwise (a chain: no coefficient is ever a sum), else None."""
        chain, current = [], name
        while current != self.graph.input_name:
            node = self.nodes[self.index[current]] if current in self.index else None
            if node is None or len(node.inputs) != 1 or self.rules[current].kind not in ("affine", "elementwise"):
                return None
            chain.append(node)
            current = node.inputs[0]
        return chain

    def sparse_rows_apply(self, name: str, max_density: float = 0.25, min_neurons: int = 1024) -> bool:
        """Does :meth:`crown_node` bound ``name`` on the rows' supports? Yes for a chain
        (:meth:`chain_to_input`) of at least ``min_neurons`` outputs whose affine nodes have sparse
        or short rows (a probe row ``e_mid L`` with at most ``max_density`` of its values or 1024
        nonzeros: convolutions, upsampling, a first linear layer of a small input)."""
        key = ("sparse", name, max_density, min_neurons)
        if key not in self._affine_info:
            chain = self.chain_to_input(name)
            ok = chain is not None and math.prod(self.shapes[name]) >= min_neurons
            affine = [n for n in (chain or []) if self.rules[n.name].kind == "affine"]
            for node in affine if ok else ():
                out, n_out = self.shapes[node.name], math.prod(self.shapes[node.name])
                probe = torch.zeros(1, 1, n_out, dtype=self.dtype, device=self.device)
                probe[0, 0, n_out // 2] = 1
                (row,), _ = self.affine(node).backward(probe.reshape(1, 1, *out))
                ok = ok and int((row != 0).sum()) <= max(max_density * row.numel(), 1024)
            self._affine_info[key] = ok and bool(affine)
        return self._affine_info[key]

    def jacobian_rows(self, node: Node) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The Jacobian ``L`` ``[n_out, n_in]`` of a single-input affine node in CSR form: row
        pointers ``[n_out + 1]``, column indices and values ``[nnz]`` (rows ``e_o L`` by the node's
        own backward step, in chunks of at most 2e6 values; cached)."""
        key = ("jacobian", node.name)
        if key not in self._affine_info:
            out, n_out, n_in = self.shapes[node.name], math.prod(self.shapes[node.name]), math.prod(
                self.shapes[node.inputs[0]])
            chunk = max(1, int(2e6 // max(n_in, n_out)))
            counts, columns, values = [], [], []
            for first in range(0, n_out, chunk):
                last = min(first + chunk, n_out)
                rows = torch.zeros(last - first, n_out, dtype=self.dtype, device=self.device)
                rows[torch.arange(last - first), torch.arange(first, last)] = 1
                with torch.no_grad():
                    (coeff,), _ = self.affine(node).backward(rows.reshape(1, last - first, *out))
                coeff = coeff.reshape(last - first, n_in)
                r, c = coeff.nonzero(as_tuple=True)  # row-major order
                counts.append(torch.bincount(r, minlength=last - first))
                columns.append(c)
                values.append(coeff[r, c])
            crow = torch.cat([torch.zeros(1, dtype=torch.long, device=self.device), torch.cat(counts).cumsum(0)])
            self._affine_info[key] = (crow, torch.cat(columns), torch.cat(values))
        return self._affine_info[key]

    def _rows_of(self, node: Node, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``cols`` ``[k]`` of the node's Jacobian restricted to their joint support: the
        support ``[k']`` (input indices) and ``L[cols][:, support]`` ``[k, k']`` (dense: a dense
        product beats a sparse one at these sizes)."""
        crow, col, val = self.jacobian_rows(node)
        starts, counts = crow[cols], crow[cols + 1] - crow[cols]
        seg = torch.repeat_interleave(torch.arange(len(cols), device=self.device), counts)
        offsets = torch.arange(int(counts.sum()), device=self.device) - torch.repeat_interleave(
            counts.cumsum(0) - counts, counts)
        pos = starts[seg] + offsets
        support, inverse = torch.unique(col[pos], return_inverse=True)
        L_sub = torch.zeros(len(cols), len(support), dtype=val.dtype, device=val.device)
        L_sub[seg, inverse] = val[pos]
        return support, L_sub

    def _crown_node_sparse(self, name: str, box: Box, bounds: Bounds,
                           deadline: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`crown_node` for a chain of affine and elementwise nodes (see
        :meth:`sparse_rows_apply`): each chunk of rows ``+-e_i`` (all channels of a few positions,
        axis -3 taken as the channels) is propagated as ``A`` ``[B, R, k]`` over the ``k`` values its
        rows can touch, through the explicit sparse Jacobians; lines, rounding ledger and
        concretisation as in :meth:`backward` and :func:`concretize_lower`, over those values."""
        shape, B = self.shapes[name], box.batch
        n = math.prod(shape)
        chain = self.chain_to_input(name)
        lines = {}
        for node in chain:
            if self.rules[node.name].kind == "elementwise":
                lo, hi = bounds[node.inputs[0]]
                r = self.relax(self.rules[node.name].op, lo.unsqueeze(1), hi.unsqueeze(1), None)
                full = (B, 1, *self.shapes[node.inputs[0]])
                lines[node.name] = [torch.broadcast_to(t, full).reshape(B, 1, -1) for t in (
                    r.slope_lower, r.bias_lower, r.slope_upper, r.bias_upper, rounding.magnitude(lo, hi).unsqueeze(1))]
        order = torch.arange(n, device=self.device)
        if len(shape) >= 3:  # position-major: rows sharing a position share their support
            order = order.reshape(shape).movedim(-3, -1).reshape(-1)
        per_chunk = max(1, int(min(self.max_rows_elements, 2e6) // (B * self._widest_in(self.backward_cone(name)))))
        lb, ub = torch.empty(B, n, dtype=self.dtype, device=self.device), torch.empty(B, n, dtype=self.dtype,
                                                                                      device=self.device)
        lower, upper = box.lower.reshape(B, -1), box.upper.reshape(B, -1)
        for first in range(0, n, per_chunk):
            if deadline is not None and time.monotonic() >= deadline:
                raise BoundsTimeout(f"deadline passed while bounding {name}")
            neurons = order[first:first + per_chunk]
            h = len(neurons)
            cols, inverse = torch.unique(neurons, return_inverse=True)
            A = torch.zeros(B, 2 * h, len(cols), dtype=self.dtype, device=self.device)
            A[:, torch.arange(h), inverse] = 1
            A[:, torch.arange(h, 2 * h), inverse] = -1
            A, cols, bias = self._sparse_backward(chain, A, cols, bounds, lines)
            sub = Box(lower[:, cols], upper[:, cols])
            value = concretize_lower(A, bias, sub, "torch")
            lb[:, neurons], ub[:, neurons] = value[:, :h], -value[:, h:]
        return lb.reshape(B, *shape), ub.reshape(B, *shape)

    def _sparse_backward(self, chain: list[Node], A: torch.Tensor, cols: torch.Tensor, bounds: Bounds,
                         lines: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``A`` ``[B, R, k]`` on the values ``cols`` of ``chain[0]`` back to the input: the input
        coefficients ``[B, R, k_in]``, their input indices ``[k_in]`` and the bias ``[B, R]`` less
        the rounding ledger (the steps of :meth:`backward_step`, their error terms over ``k`` values)."""
        B, R = A.shape[:2]
        bias = torch.zeros(B, R, dtype=self.dtype, device=self.device)
        err = torch.zeros(B, R, dtype=self.dtype, device=self.device)
        for node in chain:
            if self.rules[node.name].kind == "elementwise":
                s_l, b_l, s_u, b_u, m = (t[..., cols] for t in lines[node.name])
                relaxation = Relaxation(s_l, b_l, s_u, b_u)
                A_next, b = elementwise_backward(A, relaxation, "torch")
                e = rounding.elementwise_error(A, relaxation, m)
            else:
                affine, k = self.affine(node), len(cols)
                support, L_sub = self._rows_of(node, cols)
                A_next = A @ L_sub
                const = None if affine._const_zero else affine._const_flat[cols]
                b = torch.zeros(B, R, dtype=self.dtype, device=self.device) if const is None else A @ const
                v = self.affine_magnitude(node, [bounds[node.inputs[0]]]).reshape(B, -1)[:, cols]
                # the rows e_o L (the node's own backward arithmetic) and then sums of k products
                e = rounding.affine_error(A, v, self.terms[node.name][1] + k + 4, const)
                cols = support
            bias = bias + b
            err = err + e + rounding.bias_add_error(bias)
            A = A_next
        return A, cols, rounding.subtract(bias, err * rounding.SAFETY)

    def bound_linear(self, start: str, A: torch.Tensor, box: Box, bounds: Bounds,
                     params: Params | None = None, record: dict | None = None,
                     extra: Bounds | None = None) -> torch.Tensor:
        """Lower bound ``[B, S]`` of ``A . value(start)`` over the box (``A`` ``[B, S, *shape]``)."""
        A_in, bias = self.backward(start, A, bounds, params, record, extra)
        if A_in is None:
            return bias
        return concretize_lower(A_in, bias, box, self.backend)

    def bound_rows(self, C: torch.Tensor, box: Box, bounds: Bounds, params: Params | None = None,
                   record: dict | None = None, extra: Bounds | None = None, interval: bool = True) -> torch.Tensor:
        """Lower bounds ``[B, S]`` of ``C y`` for the flat output ``y`` (``C`` ``[B, S, n_out]``):
        the CROWN bound, and (``interval``, outside gradient computations) at least the bound from
        the output's own interval in ``bounds``."""
        if not rounding.exact_in(C, self.dtype):  # the objective itself would change
            raise ValueError(f"the property's coefficients are not exact in {self.dtype}: use float64")
        C = C.to(self.device, self.dtype)
        A = C.reshape(C.shape[0], C.shape[1], *self.graph.output_shape)
        lb = self.bound_linear(self.graph.output_name, A, box, bounds, params, record, extra)
        out = bounds.get(self.graph.output_name)
        if out is None or not interval or lb.requires_grad:  # an optimised bound keeps its gradient (alpha keeps the best)
            return lb
        # the output's own interval can be tighter (softmax in [0, 1] when the linear relaxations
        # of its exponentials are loose over a wide range); both are sound, keep the larger
        return torch.maximum(lb, interval_rows(C, *out))

    def backward(self, start: str, A: torch.Tensor, bounds: Bounds, params: Params | None = None,
                 record: dict[str, torch.Tensor] | None = None, extra: Bounds | None = None):
        """Propagate ``A`` from node ``start`` back to the input: returns (A_input or None, bias).

        ``record``, when given, receives the coefficient arriving at each nonlinear node
        (the "Lambda" branching heuristics read) and the input's coefficient. ``extra``: per node, a term ``(coef, bias)``
        added to the bound when the pass reaches that node (the beta-CROWN split terms)."""
        pending: dict[str, torch.Tensor] = {start: A}
        summed: set[str] = set()  # nodes whose coefficient is a rounded sum of contributions
        bias = torch.zeros(A.shape[:2], dtype=self.dtype, device=self.device)
        err = torch.zeros(A.shape[:2], dtype=self.dtype, device=self.device)  # rounding ledger, >= 0
        for node in reversed(self.nodes[: self.index[start] + 1]):
            coeff = pending.pop(node.name, None)
            if extra is not None and node.name in extra:
                coef_extra, bias_extra = extra[node.name]
                if coeff is not None:
                    summed.add(node.name)
                coeff = coef_extra if coeff is None else coeff + coef_extra
                bias = bias + bias_extra
                err = err + rounding.bias_add_error(bias.detach())
            if coeff is None:
                continue
            if node.name in summed:
                err = err + self._sum_error(node.name, coeff, bounds)
            if record is not None and self.rules[node.name].kind != "affine":
                record[node.name] = coeff.detach()
            contributions, b, e = self.backward_step(node, coeff, bounds, None if params is None else params.get(node.name))
            if not (isinstance(b, torch.Tensor) and b.dim() == 2 and self._zero_bias(node)):
                bias = bias + b
                err = err + e + rounding.bias_add_error(bias.detach())
            elif isinstance(e, torch.Tensor):
                err = err + e
            for name, A_i in contributions:
                if name in pending:
                    pending[name] = pending[name] + A_i
                    summed.add(name)
                else:
                    pending[name] = A_i
        A_in = pending.get(self.graph.input_name)
        if A_in is not None and self.graph.input_name in summed:
            err = err + self._sum_error(self.graph.input_name, A_in, bounds)
        if record is not None and A_in is not None:
            record[self.graph.input_name] = A_in.detach()
        return A_in, rounding.subtract(bias, err * rounding.SAFETY)

    def _zero_bias(self, node: Node) -> bool:
        """An affine node whose constant part is zero adds no bias (and no rounding of one)."""
        rule = self.rules[node.name]
        return (rule.kind == "affine" and not rule.affine.sums_to_one  # values summing to 1: the shift's sum
                and self.affine(node)._const_zero)

    def _sum_error(self, name: str, coeff: torch.Tensor, bounds: Bounds) -> torch.Tensor:
        """Rounding bound of the sums that formed ``coeff`` (the value's bounds give ``|z| <= m``)."""
        with torch.no_grad():
            lo, hi = bounds[name]
            return rounding.sum_error(coeff.detach(), rounding.magnitude(lo, hi).unsqueeze(1))

    def backward_step(self, node: Node, A: torch.Tensor, bounds: Bounds, params: dict | None):
        """One node: the coefficient contributions ``[(input name, A_i)]``, the bias and a bound
        ``[B, S]`` of the step's rounding error (:mod:`genbab.bounds.rounding`)."""
        rule = self.rules[node.name]
        if rule.kind == "affine":
            if rule.affine.sums_to_one:  # values that sum to 1: the coefficients are shifted
                m = rounding.magnitude(*bounds[node.inputs[0]]).unsqueeze(1)
                coeff, bias, err = simplex_backward(A, m)
                return [(node.inputs[0], coeff)], bias, err
            affine = self.affine(node)
            coeffs, bias = affine.backward(A)
            backward = self.terms[node.name][1]
            if backward == 0:  # data movement: the coefficients are moved, not computed
                return list(zip(node.inputs, coeffs)), bias, 0.0
            with torch.no_grad():
                v = self.affine_magnitude(node, [bounds[i] for i in node.inputs])
                err = rounding.affine_error(A.detach(), v, backward, None if affine._const_zero else affine.const)
            return list(zip(node.inputs, coeffs)), bias, err
        if rule.kind == "elementwise":
            lo, hi = bounds[node.inputs[0]]
            lines = self.relax(rule.op, lo.unsqueeze(1), hi.unsqueeze(1), params)
            coeff, bias = elementwise_backward(A, lines, self.backend)
            with torch.no_grad():
                detached = type(lines)(*(t.detach() for t in (lines.slope_lower, lines.bias_lower,
                                                              lines.slope_upper, lines.bias_upper)))
                err = rounding.elementwise_error(A.detach(), detached, rounding.magnitude(lo, hi).unsqueeze(1))
            return [(node.inputs[0], coeff)], bias, err
        lx, ux, ly, uy, ix, iy = self.bilinear_operands(node, bounds)
        x_shape, y_shape = self.shapes[node.inputs[ix]], self.shapes[node.inputs[iy]]
        product = rule.product  # the products' planes, parameters [B, S, *products] (or None)
        relaxed = product.relax(*product.expand(lx.unsqueeze(1), ux.unsqueeze(1), ly.unsqueeze(1), uy.unsqueeze(1)),
                                params)
        planes = (relaxed.lower, relaxed.upper)
        step = matmul_backward if product.contraction else bilinear_backward
        A_x, A_y, bias = step(A, planes, x_shape, y_shape)
        with torch.no_grad():
            (lx0, ux0), (ly0, uy0) = bounds[node.inputs[ix]], bounds[node.inputs[iy]]
            err = rounding.product_error(A.detach(), rounding.magnitude(lx0, ux0), rounding.magnitude(ly0, uy0),
                                         product.contraction)
        return [(node.inputs[ix], A_x), (node.inputs[iy], A_y)], bias, err


def interval_rows(C: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Lower bounds ``[B, S]`` of ``C y`` when only ``lo <= y <= hi`` (``[B, *shape]``) is known:
    ``C+ lo + C- hi``, less a bound of the two mat-vecs' rounding error (``C`` ``[B, S, n]``)."""
    lo, hi = (b.reshape(b.shape[0], -1, 1).to(C.dtype) for b in (lo, hi))  # a node may compute in less precision
    lb = (C.clamp(min=0) @ lo + C.clamp(max=0) @ hi).squeeze(-1)
    err = rounding.gamma(C.shape[-1] + 2, lb.dtype) * (C.abs() @ rounding.magnitude(lo, hi)).squeeze(-1)
    # a row picking one value with coefficient +-1 (a bound on a single output) is exact
    single = ((C != 0).sum(-1) <= 1) & ((C == 0) | (C.abs() == 1)).all(-1)
    lb = torch.where(single, lb, rounding.subtract(lb, err))
    return torch.nan_to_num(lb, nan=-math.inf)  # 0 * inf in the mat-vecs: no information
