"""VNN-LIB 2.0 queries (parsed with the ``vnnlib`` package) as a genbab :class:`~genbab.spec.Spec`.

Supported: one network with one input and one output declaration, no hidden nodes; any and/or
nesting of comparisons between linear terms, where each comparison either bounds a single input
element (the bounds of a disjunct form its input box) or constrains the outputs only (a row of
``C y <= d``). All assertions are ANDed; the formula is put in disjunctive normal form from each
assertion's ``to_dnf()`` and every disjunct becomes one genbab case. Strict comparisons are read
as non-strict in ``Query.spec`` (sound for proofs); which ones are strict is kept, and a witness
is reported only after :func:`witness_satisfies` checked it against the exact query. Anything else
raises :class:`QueryError`.

The DNF is built here rather than with ``vnnlib.compat.transform``: in vnnlib 1.0.2 that treats
two assertions that are each an ``and`` as alternatives (a disjunction), which enlarges the input
set and could turn a counterexample outside the real set into a wrong ``sat``.
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
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
    """A declared input or output: its name, element type (e.g. ``float32``) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def header(self) -> str:
        """``X float32 [1,2]``: the line that opens this variable's assignment block."""
        return f"{self.name} {self.dtype} [{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Query:
    """A VNN-LIB 2.0 query reduced to genbab's form."""

    network: str
    input: Declaration
    output: Declaration
    spec: Spec  # every comparison read as non-strict
    strict: "Strictness"  # which comparisons are strict, for the exact witness check


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
    return Declaration(decl.name, DTYPE_NAMES.get(dtype, dtype.lower()), tuple(int(d) for d in decl.shape))


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
    try:
        query = vnnlib.parse_query_string(text)
    except Exception as err:  # VNNLibException and the binding's own errors
        raise QueryError(f"{Path(path).name}: {one_line(err)}") from None
    if len(query.networks) != 1:
        raise QueryError(f"{Path(path).name}: genbab supports one network per query, found {len(query.networks)}")
    net = query.networks[0]
    if len(net.inputs) != 1 or len(net.outputs) != 1:
        raise QueryError(f"{Path(path).name}: genbab supports one input and one output declaration, found "
                         f"{len(net.inputs)} and {len(net.outputs)}")
    if len(net.hidden) > 0:
        raise QueryError(f"{Path(path).name}: constraints on hidden nodes are not supported")
    inp, out = declaration(net.inputs[0]), declaration(net.outputs[0])
    name = Path(path).name
    for decl in (inp, out):
        if decl.size > MAX_ELEMENTS:
            raise QueryError(f"{name}: {decl.name} declares {decl.size} elements, more than genbab reads ({MAX_ELEMENTS})")
    try:
        spec, strict = build_cases(query.assertions, inp, out)
    except QueryError as err:
        raise QueryError(f"{name}: {err}") from None
    except Exception as err:  # VNNLibException: non-linear terms and the like
        raise QueryError(f"{name}: {one_line(err)}") from None
    return Query(net.name, inp, out, spec, strict)


MAX_CASES = 200_000
MAX_ELEMENTS = 2**27  # float64 values (1 GiB) in one declaration or one tensor of the result
# an atom: sum(coeff * var) <= bound (or < bound when strict); var = ("X"|"Y", flat index)
Atom = tuple[dict[tuple[str, int], float], float, bool]


@dataclass(frozen=True)
class Strictness:
    """Which constraints of each case are strict: output rows ``[k, rows]``, input bounds ``[k, n_in]``."""

    rows: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor


def build_cases(assertions, inp: Declaration, out: Declaration) -> tuple[Spec, Strictness]:
    """AND the assertions, expand to DNF, and turn every feasible disjunct into a case."""
    disjuncts: list[list[Atom]] = [[]]
    for assertion in assertions:
        options = [[a for c in conj for a in atoms(c, inp, out)] for conj in assertion.expr.to_dnf()]
        if len(disjuncts) * len(options) > MAX_CASES:
            raise QueryError(f"the property expands to more than {MAX_CASES} disjuncts")
        disjuncts = [d + o for d in disjuncts for o in options]
    cases = [c for c in (to_case(conj, inp.size, out.size) for conj in disjuncts) if c is not None]
    return stack_cases(cases, inp.size, out.size)


def atoms(comparison, inp: Declaration, out: Declaration) -> list[Atom]:
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
            key = variable(term.var, inp, out)
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


def variable(var, inp: Declaration, out: Declaration) -> tuple[str, int]:
    """``("X"|"Y", flat row-major index)`` of a variable occurrence."""
    decl = {inp.name: ("X", inp), out.name: ("Y", out)}.get(var.name.split("[")[0])
    if decl is None:
        raise QueryError(f"{var.name}: only the declared input and output can be constrained")
    tag, d = decl
    index = list(var.indices)
    if len(index) != len(d.shape) or any(not 0 <= i < n for i, n in zip(index, d.shape)):
        raise QueryError(f"{var.name}: index out of the declared shape {list(d.shape)}")
    flat = 0
    for i, n in zip(index, d.shape):
        flat = flat * n + i
    return (tag, flat)


def to_case(conj: list[Atom], n_in: int, n_out: int):
    """``(lower, upper, strict_lower, strict_upper, rows)`` of one conjunction, or None when it is empty."""
    lower = torch.full((n_in,), -math.inf, dtype=torch.float64)
    upper = torch.full((n_in,), math.inf, dtype=torch.float64)
    strict_lower = torch.zeros(n_in, dtype=torch.bool)
    strict_upper = torch.zeros(n_in, dtype=torch.bool)
    rows = []
    for coeffs, bound, strict in conj:
        tags = {k[0] for k in coeffs}
        if not coeffs:
            if 0.0 < bound or (0.0 == bound and not strict):
                continue
            return None  # a false constant comparison
        if tags == {"X"}:
            if len(coeffs) != 1:
                raise QueryError("input constraints must bound single elements (the inputs form a box)")
            ((_, i), c), = coeffs.items()
            value = bound / c
            bounds, flags, tighter = (upper, strict_upper, min) if c > 0 else (lower, strict_lower, max)
            if tighter(float(bounds[i]), value) == value:
                flags[i] = strict or (bool(flags[i]) and float(bounds[i]) == value)
                bounds[i] = value
        elif tags == {"Y"}:
            row = torch.zeros(n_out, dtype=torch.float64)
            for (_, j), c in coeffs.items():
                row[j] = c
            rows.append((row, bound, strict))
        else:
            raise QueryError("constraints mixing inputs and outputs are not supported")
    if torch.any(lower > upper) or torch.any((lower == upper) & (strict_lower | strict_upper)):
        return None
    unbounded = torch.nonzero(~torch.isfinite(lower) | ~torch.isfinite(upper)).flatten()
    if len(unbounded):
        raise QueryError(f"input element {int(unbounded[0])} (flat index) has no lower or upper bound")
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
