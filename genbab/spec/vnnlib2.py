"""VNN-LIB 2.0 queries (parsed with the ``vnnlib`` package) as a genbab :class:`~genbab.spec.Spec`.

A query declares networks, each with inputs, hidden nodes (named ONNX values) and outputs, and
asserts any and/or nesting of linear comparisons over their elements. It is reduced to one flat
input ``X_all`` and one flat output ``Y_all`` (:class:`Layout`), which
:func:`genbab.model.compose.compose_query` turns into one ONNX model:

- ``X_all[n_slots]``: the elements of every declared input, network by network, input by input,
  row-major; an element equated to an earlier one (``(== X[i] X2[j])`` in every disjunct: a
  shared input, as in an equivalence query) takes that element's slot instead of a new one;
- ``Y_all``: every network's outputs then hidden nodes (declaration order, row-major), then,
  when a comparison constrains several input elements (or inputs and outputs together), a copy
  of ``X_all``, so that every such comparison is one row of ``C y <= d``.

Comparisons that bound a single input element form the input box of a disjunct; an element
without a lower or upper bound gets ``-inf`` or ``inf`` (genbab then only attacks). All assertions are ANDed; the formula is put in disjunctive normal form
from each assertion's ``to_dnf()`` and every disjunct becomes one genbab case. Strict comparisons
are read as non-strict in ``Query.spec`` (sound for proofs); which ones are strict is kept, and a
witness is reported only after :func:`witness_satisfies` checked it against the exact query.
Anything else raises :class:`QueryError`.

The DNF is built here rather than with ``vnnlib.compat.transform``: in vnnlib 1.0.2 that treats
two assertions that are each an ``and`` as alternatives (a disjunction), which enlarges the input
set and could turn a counterexample outside the real set into a wrong ``sat``.
"""

from __future__ import annotations

import gzip
import math
import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from genbab.errors import SpecError
from genbab.spec.spec import Spec

DTYPE_NAMES = {"F16": "float16", "F32": "float32", "F64": "float64", "BF16": "bfloat16", "I8": "int8",
               "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "Bool": "bool"}


class QueryError(SpecError):
    """A VNN-LIB 2.0 query genbab cannot read or does not support."""


@dataclass(frozen=True)
class Declaration:
    """A declared input, hidden node or output: its name, element type (e.g. ``float32``), shape
    and, when given, the ONNX value it names (always for hidden nodes)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    onnx_name: str | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def header(self) -> str:
        """``X float32 [1,2]``: the line that opens this variable's assignment block."""
        return f"{self.name} {self.dtype} [{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class NetworkDecl:
    """One ``declare-network``: its variables, and the network whose model it reuses (``equal-to``)."""

    name: str
    inputs: tuple[Declaration, ...]
    hidden: tuple[Declaration, ...]
    outputs: tuple[Declaration, ...]
    equal_to: str | None = None

    def variables(self) -> tuple[Declaration, ...]:
        return (*self.inputs, *self.hidden, *self.outputs)


@dataclass(frozen=True)
class Layout:
    """Where every declared variable lives in ``X_all`` / ``Y_all``.

    ``slots[name]``: the ``X_all`` index of each element of input ``name`` (row-major, length
    ``size``); ``offsets[name]``: first ``Y_all`` index of output or hidden node ``name`` (it
    fills ``size`` entries). ``Y_all`` has ``n_values`` entries, plus ``X_all`` itself at
    ``[n_values, n_values + n_slots)`` when ``copies_input``.
    """

    slots: dict[str, tuple[int, ...]]
    offsets: dict[str, int]
    n_slots: int
    n_values: int
    copies_input: bool

    @property
    def n_outputs(self) -> int:
        return self.n_values + (self.n_slots if self.copies_input else 0)


@dataclass(frozen=True)
class Query:
    """A VNN-LIB 2.0 query reduced to genbab's form over ``X_all`` / ``Y_all``."""

    networks: tuple[NetworkDecl, ...]
    layout: Layout
    spec: Spec  # every comparison read as non-strict
    strict: "Strictness"  # which comparisons are strict, for the exact witness check

    @property
    def network(self) -> str:
        return self.networks[0].name

    @property
    def input(self) -> Declaration:
        return self.networks[0].inputs[0]

    @property
    def output(self) -> Declaration:
        return self.networks[0].outputs[0]

    @property
    def simple(self) -> bool:
        """One network with one input and one output and no hidden node, the input not copied and
        not merged with itself: ``X_all``/``Y_all`` are then that network's own input and output."""
        net = self.networks[0]
        return (len(self.networks) == 1 and len(net.inputs) == 1 and len(net.outputs) == 1 and not net.hidden
                and not self.layout.copies_input and self.layout.n_slots == net.inputs[0].size)

    def unbounded_input(self) -> str | None:
        """``X[0,1]``-style name of the first input element without a lower or upper bound in some case."""
        slots = torch.nonzero(self.spec.unbounded().any(dim=0)).flatten()
        return slot_names(self.layout, self.networks)[int(slots[0])] if len(slots) else None

    def model_networks(self) -> list[str]:
        """The networks that need a model of their own (``equal-to`` ones reuse another's)."""
        return [n.name for n in self.networks if n.equal_to is None]


def read_query_text(path: Path) -> str:
    """The query's text (gunzipped when it starts with the gzip magic bytes)."""
    try:
        irregular = Path(path).exists() and not Path(path).is_file()
    except OSError as err:  # e.g. ENAMETOOLONG, which exists() does not swallow
        raise QueryError(f"{_shown_name(path)}: cannot read query ({err.strerror or err})") from None
    if irregular:  # a FIFO or device would block the read
        raise SpecError(f"{Path(path).name}: not a regular file")
    try:
        raw = Path(path).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise QueryError(f"{path}: cannot read query ({type(err).__name__}: {err})") from None


def _shown_name(path, limit: int = 80) -> str:
    """The file name for a message, shortened when it is very long."""
    name = Path(path).name
    return name if len(name) <= limit else name[:limit] + "..."


def is_vnnlib2(path: Path) -> bool:
    """Whether the file opens with a ``(vnnlib-version <2.x>)`` header (comments skipped)."""
    try:
        text = read_query_text(path)
    except QueryError:
        return False
    for line in text.splitlines():
        line = line.split(";", 1)[0].strip()
        if line:
            return line.replace(" ", "").startswith("(vnnlib-version<2")
    return False


MAX_DEPTH = 5000
"""Deepest parenthesis nesting accepted: the vnnlib parser recurses in C++ and crashes the process
(segmentation fault) somewhere between 30 000 and 100 000 levels."""


def nesting_depth(text: str) -> int:
    """Deepest parenthesis nesting of the text, comments skipped (an upper bound: string literals count)."""
    import re

    import numpy as np

    code = re.sub(r";[^\n]*", "", text).encode("utf-8", errors="replace")
    raw = np.frombuffer(code, dtype=np.uint8)
    steps = (raw == ord("(")).astype(np.int32) - (raw == ord(")")).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def declaration(decl) -> Declaration:
    dtype = getattr(decl.dtype, "name", str(decl.dtype).split(".")[-1])
    onnx_name = getattr(decl, "onnx_name", None)
    if onnx_name is not None:
        onnx_name = onnx_name[1:-1] if len(onnx_name) >= 2 and onnx_name[0] == onnx_name[-1] == '"' else onnx_name
    return Declaration(decl.name, DTYPE_NAMES.get(dtype, dtype.lower()), tuple(int(d) for d in decl.shape), onnx_name)


def network_decl(net, declared: dict[str, str] | None = None) -> NetworkDecl:
    """The parsed network; ``declared``: element types to report instead of the parsed ones, by
    variable name (those :func:`with_isomorphic_types` rewrote)."""
    equal_to = getattr(net, "equal_to", "") or None

    def decls(items) -> tuple[Declaration, ...]:
        out = [declaration(d) for d in items]
        return tuple(replace(d, dtype=declared[d.name]) if declared and d.name in declared else d for d in out)

    return NetworkDecl(net.name, decls(net.inputs), decls(net.hidden), decls(net.outputs), equal_to)


def is_isomorphic_type_mismatch(err: Exception) -> bool:
    """Whether the parser refused the query only for element types differing between an
    ``isomorphic-to`` network and the network it names."""
    import json

    try:
        errors = json.loads(str(err))["errors"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(errors) and all(isinstance(e, dict) and str(e.get("message", "")).startswith("Type mismatch for variable")
                                and "between networks" in str(e.get("message", "")) for e in errors)


_DECLARE_NETWORK = re.compile(r"\(\s*declare-network\s+([^\s()]+)")
_ISOMORPHIC_TO = re.compile(r"\(\s*isomorphic-to\s+([^\s()]+)\s*\)")
_DECLARE_VARIABLE = re.compile(r"\(\s*(declare-input|declare-hidden|declare-output)\s+([^\s()]+)\s+([^\s()\[]+)")


def with_isomorphic_types(text: str) -> tuple[str, dict[str, str]]:
    """``text`` with the element type of every input, hidden node and output declared in an
    ``isomorphic-to`` network replaced by the type of the same-numbered declaration of that kind
    in the network it names; and ``{variable: declared element type}`` of the replaced ones.
    Comments and string literals are never rewritten (matching runs on a copy in which they are blanked)."""
    masked = _blank_comments_and_strings(text)
    blocks: dict[str, tuple[int, int]] = {}
    for m in _DECLARE_NETWORK.finditer(masked):
        blocks.setdefault(m.group(1), (m.start(), _closing_paren(masked, m.start())))

    def variables(name: str) -> list[re.Match]:
        start, end = blocks[name]
        return list(_DECLARE_VARIABLE.finditer(masked, start, end))

    edits: list[tuple[int, int, str]] = []
    declared: dict[str, str] = {}
    for name, (start, end) in blocks.items():
        target = _ISOMORPHIC_TO.search(masked, start, end)
        if target is None or target.group(1) not in blocks or target.group(1) == name:
            continue
        theirs = variables(target.group(1))
        for kind in ("declare-input", "declare-hidden", "declare-output"):
            mine = [m for m in variables(name) if m.group(1) == kind]
            model = [m for m in theirs if m.group(1) == kind]
            for m, other in zip(mine, model):
                if m.group(3) != other.group(3):
                    edits.append((m.start(3), m.end(3), other.group(3)))
                    declared[m.group(2)] = DTYPE_NAMES.get(m.group(3), m.group(3).lower())
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text, declared


def _blank_comments_and_strings(text: str) -> str:
    """``text`` with ``;`` comments and the insides of ``"..."`` strings replaced by spaces (same offsets)."""
    return re.sub(r';[^\n]*|"[^"]*"', lambda m: m.group(0)[0] + " " * (len(m.group(0)) - 1)
                  if m.group(0)[0] == '"' else " " * len(m.group(0)), text)


def _closing_paren(text: str, start: int) -> int:
    """Offset just past the parenthesis that closes the one opened at ``start`` (the end of ``text`` if none)."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def load_query(path: Path) -> Query:
    """Parse a VNN-LIB 2.0 file into a :class:`Query` (raises :class:`QueryError`)."""
    try:
        import vnnlib
    except ImportError:
        raise QueryError("VNN-LIB 2.0 queries need the vnnlib package: pip install vnnlib") from None
    text = read_query_text(path)
    depth = nesting_depth(text)
    if depth > MAX_DEPTH:
        raise QueryError(f"{Path(path).name}: parentheses nested {depth} deep, more than genbab reads ({MAX_DEPTH})")
    declared: dict[str, str] = {}
    try:
        query = vnnlib.parse_query_string(text)
    except Exception as err:  # VNNLibException and the binding's own errors
        # The parser wants an ``isomorphic-to`` network's variables to have the element types of
        # the network it is isomorphic to. genbab verifies in real arithmetic (each model runs in
        # its own types), so those types do not matter to it: retry with the types copied over,
        # and report the declared ones (``declared``) in the assignment.
        if not is_isomorphic_type_mismatch(err):
            raise QueryError(f"{Path(path).name}: {one_line(err)}") from None
        text, declared = with_isomorphic_types(text)
        try:
            query = vnnlib.parse_query_string(text)
        except Exception as err:
            raise QueryError(f"{Path(path).name}: {one_line(err)}") from None
    name = Path(path).name
    if len(query.networks) == 0:
        raise QueryError(f"{name}: the query declares no network")
    networks = tuple(network_decl(n, declared) for n in query.networks)
    try:
        check_networks(networks)
        spec, strict, layout = build_cases(query.assertions, networks)
    except QueryError as err:
        raise QueryError(f"{name}: {err}") from None
    except Exception as err:  # VNNLibException: non-linear terms and the like
        raise QueryError(f"{name}: {one_line(err)}") from None
    return Query(networks, layout, spec, strict)


def check_networks(networks: tuple[NetworkDecl, ...]) -> None:
    """Declarations genbab can lay out: sizes within MAX_ELEMENTS, ``equal-to`` naming a declared network."""
    names = {n.name for n in networks}
    total = 0
    for net in networks:
        if net.equal_to is not None and net.equal_to not in names:
            raise QueryError(f"network {net.name} is equal-to {net.equal_to}, which is not declared")
        if not net.inputs or not net.outputs:
            raise QueryError(f"network {net.name} must declare at least one input and one output")
        for decl in net.variables():
            total += decl.size
            if decl.size > MAX_ELEMENTS or total > MAX_ELEMENTS:
                raise QueryError(f"{decl.name} declares {decl.size} elements, more than genbab reads ({MAX_ELEMENTS} "
                                 "in all)")


MAX_CASES = 200_000
MAX_ELEMENTS = 2**27  # float64 values (1 GiB) in one declaration or one tensor of the result
# a raw atom: sum(coeff * var) <= bound (or < bound when strict); var = (declared name, flat index)
RawAtom = tuple[dict[tuple[str, int], float], float, bool]
# an atom over the layout: var = ("X", slot of X_all) or ("Y", index into Y_all)
Atom = tuple[dict[tuple[str, int], float], float, bool]


@dataclass(frozen=True)
class Strictness:
    """Which constraints of each case are strict: output rows ``[k, rows]``, input bounds ``[k, n_in]``."""

    rows: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor


def build_cases(assertions, networks: tuple[NetworkDecl, ...]) -> tuple[Spec, Strictness, Layout]:
    """AND the assertions, expand to DNF, lay the variables out, turn every feasible disjunct into a case."""
    kinds = {d.name: ("X", d) for n in networks for d in n.inputs}
    kinds.update({d.name: ("Y", d) for n in networks for d in (*n.hidden, *n.outputs)})
    disjuncts: list[list[RawAtom]] = [[]]
    for assertion in assertions:
        options = [[a for c in conj for a in atoms(c, kinds)] for conj in assertion.expr.to_dnf()]
        if len(disjuncts) * len(options) > MAX_CASES:
            raise QueryError(f"the property expands to more than {MAX_CASES} disjuncts")
        disjuncts = [d + o for d in disjuncts for o in options]
    layout = make_layout(networks, shared_inputs(disjuncts, kinds))
    translated = [[place(a, kinds, layout) for a in conj] for conj in disjuncts]
    copies = any(needs_copy(a) for conj in translated for a in conj)
    layout = Layout(layout.slots, layout.offsets, layout.n_slots, layout.n_values, copies)
    n_in, n_out = layout.n_slots, layout.n_outputs
    cases = [c for c in (to_case(conj, n_in, n_out, layout.n_values) for conj in translated) if c is not None]
    return (*stack_cases(cases, n_in, n_out), layout)


def slot_names(layout: Layout, networks: tuple[NetworkDecl, ...]) -> list[str]:
    """``X[0,1]``-style name of the first declared element held by each slot of ``X_all``."""
    names: list[str | None] = [None] * layout.n_slots
    for d in (d for n in networks for d in n.inputs):
        for flat, slot in enumerate(layout.slots[d.name]):
            if names[slot] is None:
                index, rest = [], flat
                for n in reversed(d.shape):
                    index.append(rest % n)
                    rest //= n
                names[slot] = f"{d.name}[{','.join(map(str, reversed(index)))}]"
    return names


def atoms(comparison, kinds: dict) -> list[RawAtom]:
    """``lhs OP rhs`` as one or two atoms ``sum(c * v) <= b`` (``=`` gives two)."""
    kind = type(comparison).__name__
    if kind == "NotEqual":
        raise QueryError("!= comparisons are not supported")
    coeffs: dict[tuple[str, int], float] = {}
    const = 0.0
    for side, sign in ((comparison.lhs, 1.0), (comparison.rhs, -1.0)):
        lin = side.to_linear_expr()
        const += sign * lin.constant
        for term in lin.terms:
            key = variable(term.var, kinds)
            coeffs[key] = coeffs.get(key, 0.0) + sign * term.coeff
    coeffs = {k: v for k, v in coeffs.items() if v != 0.0}
    if not math.isfinite(const) or not all(map(math.isfinite, coeffs.values())):
        raise QueryError("number out of range: the arithmetic of a comparison overflows")
    strict = kind in ("LessThan", "GreaterThan")
    less = (coeffs, -const, strict)  # lhs - rhs <= 0
    greater = ({k: -v for k, v in coeffs.items()}, const, strict)  # rhs - lhs <= 0
    if kind in ("LessEqual", "LessThan"):
        return [less]
    if kind in ("GreaterEqual", "GreaterThan"):
        return [greater]
    if kind == "Equal":
        return [less, greater]
    raise QueryError(f"unsupported comparison {kind}")


def variable(var, kinds: dict) -> tuple[str, int]:
    """``(declared name, flat row-major index)`` of a variable occurrence."""
    name = var.name.split("[")[0]
    if name not in kinds:
        raise QueryError(f"{var.name}: not a declared input, hidden node or output")
    d = kinds[name][1]
    index = list(var.indices)
    if len(index) != len(d.shape) or any(not 0 <= i < n for i, n in zip(index, d.shape)):
        raise QueryError(f"{var.name}: index out of the declared shape {list(d.shape)}")
    flat = 0
    for i, n in zip(index, d.shape):
        flat = flat * n + i
    return (name, flat)


def shared_inputs(disjuncts: list[list[RawAtom]], kinds: dict) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """Pairs of input elements equated (``c a - c b <= 0`` and ``c b - c a <= 0``) in every disjunct."""
    common = None
    for conj in disjuncts:
        halves = set()
        for coeffs, bound, strict in conj:
            if len(coeffs) != 2 or bound != 0.0 or strict or any(kinds[k[0]][0] != "X" for k in coeffs):
                continue
            (a, ca), (b, cb) = sorted(coeffs.items())
            if ca == -cb:
                halves.add((a, b, ca > 0))
        pairs = {(a, b) for a, b, up in halves if up and (a, b, False) in halves}
        common = pairs if common is None else common & pairs
    return sorted(common or ())


def make_layout(networks: tuple[NetworkDecl, ...], shared: list) -> Layout:
    """Slots for the input elements (an element equated to an earlier one shares its slot) and
    ``Y_all`` offsets: each network's outputs, then its hidden nodes."""
    parent: dict[tuple[str, int], tuple[str, int]] = {}
    order = {(d.name, i): k for k, (d, i) in enumerate((d, i) for n in networks for d in n.inputs for i in range(d.size))}

    def root(e):
        while parent.get(e, e) != e:
            e = parent[e]
        return e

    for a, b in shared:  # the earlier element (declaration order) represents the pair
        ra, rb = sorted((root(a), root(b)), key=order.__getitem__)
        if ra != rb:
            parent[rb] = ra
    slot_of: dict[tuple[str, int], int] = {}
    slots: dict[str, tuple[int, ...]] = {}
    for net in networks:
        for d in net.inputs:
            row = []
            for i in range(d.size):
                r = root((d.name, i))
                if r not in slot_of:
                    slot_of[r] = len(slot_of)
                row.append(slot_of[r])
            slots[d.name] = tuple(row)
    offsets: dict[str, int] = {}
    n_values = 0
    for net in networks:
        for d in (*net.outputs, *net.hidden):
            offsets[d.name] = n_values
            n_values += d.size
    return Layout(slots, offsets, len(slot_of), n_values, False)


def place(atom: RawAtom, kinds: dict, layout: Layout) -> Atom:
    """A raw atom over ``("X", slot)`` / ``("Y", index)`` (merged elements' coefficients add up)."""
    coeffs, bound, strict = atom
    out: dict[tuple[str, int], float] = {}
    for (name, i), c in coeffs.items():
        key = ("X", layout.slots[name][i]) if kinds[name][0] == "X" else ("Y", layout.offsets[name] + i)
        out[key] = out.get(key, 0.0) + c
    return {k: v for k, v in out.items() if v != 0.0}, bound, strict


def needs_copy(atom: Atom) -> bool:
    """Whether the atom reads inputs but is not a single-element bound (it becomes a row over the copy)."""
    tags = [k[0] for k in atom[0]]
    return "X" in tags and len(tags) > 1


def to_case(conj: list[Atom], n_in: int, n_out: int, copy_offset: int):
    """``(lower, upper, strict_lower, strict_upper, rows)`` of one conjunction, or None when it is empty.

    A single-element input atom bounds the box (an element no atom bounds keeps ``-inf``/``inf``);
    any other atom is a row over ``Y_all``, its input terms read from the copy of ``X_all`` at
    ``copy_offset``."""
    lower = torch.full((n_in,), -math.inf, dtype=torch.float64)
    upper = torch.full((n_in,), math.inf, dtype=torch.float64)
    strict_lower = torch.zeros(n_in, dtype=torch.bool)
    strict_upper = torch.zeros(n_in, dtype=torch.bool)
    rows = []
    for coeffs, bound, strict in conj:
        if not coeffs:
            if 0.0 < bound or (0.0 == bound and not strict):
                continue
            return None  # a false constant comparison
        if not needs_copy((coeffs, bound, strict)) and next(iter(coeffs))[0] == "X":
            ((_, i), c), = coeffs.items()
            value = bound / c
            bounds, flags, tighter = (upper, strict_upper, min) if c > 0 else (lower, strict_lower, max)
            if tighter(float(bounds[i]), value) == value:
                flags[i] = strict or (bool(flags[i]) and float(bounds[i]) == value)
                bounds[i] = value
        else:
            row = torch.zeros(n_out, dtype=torch.float64)
            for (tag, j), c in coeffs.items():
                row[j if tag == "Y" else copy_offset + j] += c
            rows.append((row, bound, strict))
    if torch.any(lower > upper) or torch.any((lower == upper) & (strict_lower | strict_upper)):
        return None
    return lower, upper, strict_lower, strict_upper, rows


def stack_cases(cases: list, n_in: int, n_out: int) -> tuple[Spec, Strictness]:
    """Cases as padded tensors: rows beyond a case's own are ``0 . y <= 1``, which every output
    satisfies strictly (so a short case, or one with no output constraint, can be witnessed)."""
    k = len(cases)
    width = max((len(c[4]) for c in cases), default=1) or 1
    if k * width * n_out > MAX_ELEMENTS or k * n_in > MAX_ELEMENTS:
        raise QueryError(f"the property is too large: {k} cases x {width} rows x {n_out} outputs, {n_in} inputs "
                         f"(at most {MAX_ELEMENTS} values per tensor)")
    C = torch.zeros(k, width, n_out, dtype=torch.float64)
    d = torch.ones(k, width, dtype=torch.float64)
    strict_rows = torch.zeros(k, width, dtype=torch.bool)
    for i, case in enumerate(cases):
        for r, (row, bound, strict) in enumerate(case[4]):
            C[i, r], d[i, r], strict_rows[i, r] = row, bound, strict
    if k == 0:
        empty = torch.zeros(0, n_in, dtype=torch.float64)
        flags = torch.zeros(0, n_in, dtype=torch.bool)
        return Spec(empty, empty.clone(), C, d), Strictness(strict_rows, flags, flags.clone())
    spec = Spec(torch.stack([c[0] for c in cases]), torch.stack([c[1] for c in cases]), C, d)
    return spec, Strictness(strict_rows, torch.stack([c[2] for c in cases]), torch.stack([c[3] for c in cases]))


def search_spec(query: "Query", slack: float = 1e-9) -> Spec:
    """The spec genbab searches: non-strict output rows loosened by ``slack * max(1, |d|)``.

    genbab reports a witness only when ``C y - d < 0`` holds strictly, which is exact for strict
    comparisons but misses points exactly on a non-strict boundary (``Y <= 0`` with ``Y = 0``).
    Loosening those rows lets such points through; :func:`witness_satisfies` then re-checks every
    witness against the exact query. A proof on the loosened set covers the exact one.
    """
    spec = query.spec
    loosen = slack * torch.clamp(spec.d.abs(), min=1.0) * (~query.strict.rows)
    return Spec(spec.lower, spec.upper, spec.C, spec.d + loosen)


def witness_satisfies(query: "Query", case: int, x, y) -> bool:
    """Whether input ``x`` and output ``y`` (flattened) satisfy case ``case`` of the exact query."""
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    spec, strict = query.spec, query.strict
    lo, hi = spec.lower[case], spec.upper[case]
    if torch.any(x < lo) or torch.any(x > hi):
        return False
    if torch.any((x == lo) & strict.lower[case]) or torch.any((x == hi) & strict.upper[case]):
        return False
    margin = spec.C[case] @ y - spec.d[case]
    return bool(torch.all(torch.where(strict.rows[case], margin < 0, margin <= 0)))


def one_line(err: Exception) -> str:
    """An exception's message on one line (the parser's errors are multi-line JSON)."""
    text = " ".join(str(err).split())
    if text.startswith("{"):  # the parser's JSON report: its first error, readably
        import json

        try:
            errors = json.loads(str(err))["errors"]
            first = errors[0]
            where = f"line {first['line']}: " if "line" in first else ""
            more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
            return " ".join(f"{where}{first.get('message', 'error')}: {first.get('hint', '')}".split()).rstrip(":") + more
        except (ValueError, KeyError, IndexError, TypeError):
            pass
    if text in ("stod", "stoi", "stol", "stoll", "stoul", "stoull", "stof"):  # C++ std::out_of_range, no detail
        return f"number out of range ({text})"
    return text
