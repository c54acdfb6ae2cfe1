"""VNN-LIB 1.0 parser: turns a property file into a :class:`~genbab.spec.spec.Spec`.

Supported (the VNN-LIB subset used by VNN-COMP):

* ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)``; ``;`` comments; the benign SMT-LIB
  commands ``check-sat``, ``get-model``, ``exit``, ``set-logic``, ``set-info``, ``set-option`` are
  ignored. A variable may be used anywhere in the file as long as the file declares it.
* Top-level ``(assert F)``, all ANDed. ``F`` is built from ``and``, ``or`` (any nesting), ``true``,
  ``false`` and comparisons ``<= >= < > =`` of linear terms (chains such as ``(<= a b c)`` are
  ANDed pairwise). Terms: variables, numeric constants in any float syntax, ``(+ t ...)``,
  ``(- t)``, ``(- t u ...)`` and ``(* t ...)`` with at most one non-constant factor.
* Strict comparisons are read as non-strict. The property describes the *unsafe* set, so this can
  only enlarge it: a proof that the enlarged set is unreachable also proves the original property
  (a counterexample found on the boundary must be re-checked by the caller).

The formula is converted to disjunctive normal form. In each disjunct, constraints over X alone
must be bounds on a single input (they form the input box; an input without a lower or upper
bound gets ``-inf`` or ``inf``, on which genbab only attacks); constraints over Y alone become rows
of ``C y <= d``; constant constraints are evaluated. Everything else (``not``, ``=>``, ``ite``,
nonlinear terms, several inputs in one constraint, inputs mixed with outputs) raises
:class:`~genbab.errors.SpecError` with one line ``file:line: message``.

Speed: one regular expression tokenizes the file and swallows each *run* of flat comparisons
``(op a b)`` whole, so the Python loop only sees the structure (``assert``/``and``/``or``). Runs
are cut into atom strings with ``str.split``; each distinct string is interpreted once (the 34 MB
``cardinality`` files repeat a few thousand distinct atoms 2.3 million times), and when all of them
have the form ``(op VAR number)`` they are tokenized and converted column-wise in bulk. Parsing
uses an explicit stack (no recursion), the DNF keeps runs as ``range`` segments of atom positions,
and the tensors are assembled with numpy.
"""

from __future__ import annotations

import bisect
import gzip
import itertools
import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genbab.errors import SpecError
from genbab.spec.spec import Spec

__all__ = ["parse_vnnlib_file", "parse_vnnlib_text", "MAX_CASES"]

MAX_CASES = 10**6
"""Largest number of DNF cases accepted before the expansion is refused."""
MAX_INDEX = 10**7
"""Largest variable index accepted in a declaration."""
MAX_DEPTH = 100_000
"""Deepest parenthesis nesting accepted (real properties nest a handful of levels)."""
MAX_ALTERNATIONS = 1_000
"""Most and/or alternations on one path: the DNF of ``(or a (and b (or c ...)))`` grows quadratically
with them (nesting of one operator is flattened and costs linear time)."""
MAX_ELEMENTS = 2**27
"""Largest number of float64 values (1 GiB) of one tensor of the result; a property past it is refused
instead of exhausting memory (e.g. ``Y_9999999`` declared and a few hundred output cases)."""

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RUN = r"(?:\(\s*+[<>=][^();]*+\)\s*+)++"
# Groups: 1 run of flat comparisons; 2 '('; 3 ')'; 4 any other token; 5 end of text.
_TOKEN = re.compile(rf"(?:\s+|;[^\n]*)*+(?:({_RUN})|(\()|(\))|([^\s();]+)|(\Z))")
_FLAT_TOKEN = re.compile(r"[^\s(]+")
_NUM_RE = re.compile(_NUM + r"\Z")
_VAR_RE = re.compile(r"([XY])_(\d+)\Z")

_COMPARISONS = {"<=": "le", "<": "le", ">=": "ge", ">": "ge", "=": "eq"}
_FLIP = {"le": "ge", "ge": "le", "eq": "eq"}
_SENSE_CODE = {"<=": 0, "<": 0, ">=": 1, ">": 1, "=": 2}  # bulk encoding of le / ge / eq
_SENSE_NAME = ("le", "ge", "eq")
_NOT_A_VAR = 2**62  # code of a token that is not a declared variable
_TERM_OPS = {"+", "-", "*"}
_LOGIC_OPS = {"and", "or"}
_IGNORED_COMMANDS = {"check-sat", "get-model", "exit", "set-logic", "set-info", "set-option"}
_TOP_COMMANDS = {"declare-const", "assert"} | _IGNORED_COMMANDS

_LOWER, _UPPER, _ROW = 0, 1, 2  # atom kinds

Where = int | Callable[[], int]
"""A text position for error messages, possibly computed lazily."""

Conj = list[range]
"""A conjunction of leaves; a leaf ``>= 0`` is a run position, ``< 0`` a nested comparison."""


@dataclass
class _Dnf:
    """A formula in DNF: ``common`` AND (OR over ``cases``); ``cases == []`` means *false*.

    A formula without a disjunction is represented by a plain :data:`Conj` instead.
    """

    common: Conj
    cases: list[Conj]


def _false() -> _Dnf:
    """The formula *false* (no case)."""
    return _Dnf([], [])


@dataclass
class _Lin:
    """A linear term ``sum coefs[v] * v + const``; variables are ``("X", i)`` / ``("Y", j)``."""

    coefs: dict[tuple[str, int], float]
    const: float


@dataclass
class _Frame:
    """An open parenthesis: its head symbol, parsed arguments and text position."""

    pos: int
    head: str | None = None
    args: list = field(default_factory=list)
    logic: str | None = None  # the innermost and/or at or above this frame
    alternations: int = 0  # and/or changes from the assert down to this frame


@dataclass
class _Flat:
    """The arguments of an ``and``/``or`` nested directly in the same operator: the parent splices
    them in, so ``(or a (or b (or c ...)))`` costs linear time, not quadratic."""

    values: list


def _flatten(values: list) -> list:
    """``values`` with every :class:`_Flat` replaced by its own values, in order (no recursion)."""
    if not any(isinstance(v, _Flat) for v in values):
        return values
    out: list = []
    todo = [iter(values)]
    while todo:
        for v in todo[-1]:
            if isinstance(v, _Flat):
                todo.append(iter(v.values))
                break
            out.append(v)
        else:
            todo.pop()
    return out


@dataclass
class _Store:
    """All atoms: atom ``a`` is ``X_idx >= val`` (_LOWER), ``X_idx <= val`` (_UPPER) or output row
    ``idx`` (_ROW). Output rows ``coefs . y <= rhs`` are interned, so equal rows share one id.

    A *piece* (one comparison of the file, possibly a chain or an ``=``) is a list of atoms, or
    constantly false; pieces are stored in CSR form (``piece_start``/``piece_count`` index
    ``piece_atoms``).
    """

    kind: list[int] = field(default_factory=list)
    idx: list[int] = field(default_factory=list)
    val: list[float] = field(default_factory=list)
    row_ids: dict[tuple, int] = field(default_factory=dict)
    piece_start: list[int] = field(default_factory=list)
    piece_count: list[int] = field(default_factory=list)
    piece_false: list[bool] = field(default_factory=list)
    piece_atoms: list[int] = field(default_factory=list)

    def atom(self, kind: int, idx: int, value: float) -> int:
        """Add one atom; return its id."""
        self.kind.append(kind)
        self.idx.append(idx)
        self.val.append(value)
        return len(self.kind) - 1

    def row(self, coefs: tuple[tuple[int, float], ...], rhs: float) -> int:
        """Add the atom ``sum c * Y_j <= rhs`` (``coefs`` sorted by ``j``); return its id."""
        rid = self.row_ids.setdefault((coefs, rhs), len(self.row_ids))
        return self.atom(_ROW, rid, 0.0)

    def x_bounds(self, var: int, value: float, sense: str) -> list[int]:
        """Atoms of ``X_var (<=|>=|=) value``."""
        if sense == "le":
            return [self.atom(_UPPER, var, value)]
        if sense == "ge":
            return [self.atom(_LOWER, var, value)]
        return [self.atom(_LOWER, var, value), self.atom(_UPPER, var, value)]

    def y_rows(self, coefs: tuple[tuple[int, float], ...], rhs: float, sense: str) -> list[int]:
        """Atoms of ``coefs . y (<=|>=|=) rhs`` as ``<=`` rows."""
        neg = tuple((j, -c) for j, c in coefs)
        if sense == "le":
            return [self.row(coefs, rhs)]
        if sense == "ge":
            return [self.row(neg, -rhs)]
        return [self.row(coefs, rhs), self.row(neg, -rhs)]

    def add_piece(self, atoms: list[int] | None) -> int:
        """Register a piece (``None``: constantly false); return its id."""
        self.piece_start.append(len(self.piece_atoms))
        self.piece_count.append(len(atoms) if atoms else 0)
        self.piece_false.append(atoms is None)
        if atoms:
            self.piece_atoms.extend(atoms)
        return len(self.piece_start) - 1

    def add_bound_pieces(self, var: np.ndarray, value: np.ndarray, sense: np.ndarray) -> np.ndarray:
        """Register the pieces ``X_var (<=|>=|=) value`` (sense codes 0/1/2) in bulk; return ids."""
        eq = sense == 2
        count = 1 + eq.astype(np.int64)
        start = np.cumsum(count) - count
        kinds = np.empty(int(count.sum()), dtype=np.int8)
        kinds[start] = np.where(sense == 0, _UPPER, _LOWER)
        kinds[start[eq] + 1] = _UPPER
        first_atom, first_piece = len(self.kind), len(self.piece_start)
        self.kind.extend(kinds.tolist())
        self.idx.extend(np.repeat(var, count).tolist())
        self.val.extend(np.repeat(value, count).tolist())
        self.piece_start.extend((start + len(self.piece_atoms)).tolist())
        self.piece_count.extend(count.tolist())
        self.piece_false.extend([False] * len(count))
        self.piece_atoms.extend(range(first_atom, len(self.kind)))
        return np.arange(first_piece, len(self.piece_start))


class _Parser:
    """Single-pass stack parser of VNN-LIB text into a DNF over atom leaves."""

    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name
        self.store = _Store()
        self.declared: dict[str, set[int]] = {"X": set(), "Y": set()}
        self.pending: dict[tuple[str, int], Where] = {}  # variables used before any declaration
        self.asserts: list = []
        self.run_spans: list[tuple[int, int]] = []
        self.n_positions = 0
        self.nested_piece: list[int] = []  # piece of leaf -k-1

    # -- errors ---------------------------------------------------------------------------
    def error(self, where: Where, msg: str) -> SpecError:
        """A SpecError ``name:line: msg`` for the text position ``where``."""
        pos = where() if callable(where) else where
        line = self.text.count("\n", 0, pos) + 1
        return SpecError(f"{self.name}:{line}: {msg}")

    def limit_error(self) -> SpecError:
        """The error raised when the DNF would exceed :data:`MAX_CASES` cases."""
        return SpecError(f"{self.name}: the property expands to more than {MAX_CASES} cases")

    # -- main loop ------------------------------------------------------------------------
    def parse(self) -> Conj | _Dnf:
        """Parse the whole text; return the AND of all asserts in DNF."""
        stack: list[_Frame] = []
        for m in _TOKEN.finditer(self.text):
            group = m.lastindex
            if group == 1:
                self.run(stack, m.start(1), m.end(1))
            elif group == 2:
                if len(stack) >= MAX_DEPTH:
                    raise self.error(m.start(2), f"parentheses nested more than {MAX_DEPTH} deep")
                stack.append(_Frame(m.start(2)))
            elif group == 3:
                if not stack:
                    raise self.error(m.start(3), "unbalanced parenthesis: unexpected ')'")
                frame = stack.pop()
                value = self.close(frame, top=not stack, parent=stack[-1].head if stack else None)
                if stack:
                    stack[-1].args.append(value)
            elif group == 4:
                self.symbol(stack, m.group(4), m.start(4))
            else:
                break
        if stack:
            raise self.error(stack[-1].pos, "unbalanced parenthesis: '(' is never closed"
                             " (truncated file?)")
        if not self.asserts:
            raise self.error(len(self.text), "no assert found (empty or truncated file?)")
        return _conjoin(self.asserts, self.limit_error)

    def run(self, stack: list[_Frame], start: int, end: int) -> None:
        """Record a run of flat comparisons as consecutive positions (interpreted later)."""
        if not stack:
            raise self.error(start, "a comparison is only allowed inside an assert")
        if stack[-1].head is None:
            raise self.error(start, "expected an operator after '('")
        count = self.text.count(")", start, end)
        self.run_spans.append((start, end))
        stack[-1].args.append(range(self.n_positions, self.n_positions + count))
        self.n_positions += count

    # -- tokens ---------------------------------------------------------------------------
    def symbol(self, stack: list[_Frame], tok: str, pos: int) -> None:
        """Handle a non-parenthesis token: an operator head or an argument."""
        if not stack:
            raise self.error(pos, f"unexpected token {_show(tok)} outside parentheses")
        frame = stack[-1]
        if frame.head is None:
            self.check_head(tok, pos, top=len(stack) == 1)
            frame.head = tok
            if len(stack) > 1:
                parent = stack[-2]
                frame.logic, frame.alternations = parent.logic, parent.alternations
                if tok in _LOGIC_OPS:
                    frame.alternations += parent.logic is not None and parent.logic != tok
                    frame.logic = tok
                    if frame.alternations > MAX_ALTERNATIONS:
                        raise self.error(pos, f"'and' and 'or' alternate more than {MAX_ALTERNATIONS} levels deep")
        elif frame.head == "declare-const":
            frame.args.append((tok, pos))
        elif frame.head not in _IGNORED_COMMANDS:
            frame.args.append(self.argument(tok, pos))

    def check_head(self, tok: str, pos: int, top: bool) -> None:
        """Reject an operator that is unknown or used at the wrong nesting level."""
        if top:
            if tok not in _TOP_COMMANDS:
                raise self.error(pos, f"unsupported top-level command {_show(tok)}")
        elif tok not in _COMPARISONS and tok not in _TERM_OPS and tok not in _LOGIC_OPS:
            if tok in _TOP_COMMANDS:
                raise self.error(pos, f"{_show(tok)} is only allowed at top level")
            raise self.error(pos, f"unsupported construct {_show(tok)}")

    def argument(self, tok: str, where: Where) -> _Lin | Conj | _Dnf:
        """The value of a bare token: number, variable, ``true`` or ``false``."""
        if tok == "true":
            return []
        if tok == "false":
            return _false()
        if _NUM_RE.match(tok):
            return _Lin({}, self.number(tok, where))
        var = _VAR_RE.match(tok)
        if var is None:
            raise self.error(where, f"expected a number or a variable, got {_show(tok)}")
        kind, idx = var.group(1), int(var.group(2))
        if idx not in self.declared[kind]:
            self.pending.setdefault((kind, idx), where)
        return _Lin({(kind, idx): 1.0}, 0.0)

    def number(self, tok: str, where: Where) -> float:
        """``float(tok)``, refusing values that overflow to infinity."""
        value = float(tok)
        if math.isinf(value):
            raise self.error(where, f"number out of range: {_show(tok)}")
        return value

    # -- closing a parenthesis ------------------------------------------------------------
    def close(self, frame: _Frame, top: bool, parent: str | None = None):
        """Reduce a complete ``( head args... )`` to its value (``parent``: the enclosing head)."""
        head = frame.head
        if head is None:
            raise self.error(frame.pos, "empty parentheses '()'")
        if top:
            self.command(frame)
            return None
        if head in _COMPARISONS:
            atoms = self.compare(head, self.term_args(frame), frame.pos)
            return self.nested_leaf(atoms)
        if head in _LOGIC_OPS:
            values = [self.formula_arg(frame, a) for a in frame.args]
            if parent == head:
                return _Flat(values)
            values = _flatten(values)
            if head == "and":
                return _conjoin(values, self.limit_error)
            return _disjoin(values, self.limit_error)
        return self.term(frame)

    def nested_leaf(self, atoms: list[int] | None) -> Conj | _Dnf:
        """The formula of a comparison found outside a run (it had nested terms)."""
        if atoms is None:
            return _false()
        if not atoms:
            return []
        self.nested_piece.append(self.store.add_piece(atoms))
        leaf = -len(self.nested_piece)
        return [range(leaf, leaf + 1)]

    def command(self, frame: _Frame) -> None:
        """Execute a top-level command: declare a variable or record an assert."""
        if frame.head == "declare-const":
            self.declare(frame)
        elif frame.head == "assert":
            args = [self.formula_arg(frame, a) for a in frame.args]
            count = sum(len(a) if isinstance(a, range) else 1 for a in args)
            if count != 1:
                raise self.error(frame.pos, f"assert takes one formula, got {count}")
            self.asserts.append(args[0])

    def declare(self, frame: _Frame) -> None:
        """Record ``(declare-const X_i Real)``."""
        args = frame.args
        if len(args) != 2 or not all(isinstance(a, tuple) for a in args):
            raise self.error(frame.pos, "expected (declare-const NAME Real)")
        (name, pos), (sort, sort_pos) = args
        var = _VAR_RE.match(name)
        if var is None:
            raise self.error(pos, f"unsupported variable name {_show(name)} (expected X_i or Y_j)")
        if sort != "Real":
            raise self.error(sort_pos, f"unsupported sort {_show(sort)} (expected Real)")
        kind, idx = var.group(1), int(var.group(2))
        if idx > MAX_INDEX:
            raise self.error(pos, f"variable index too large: {_show(name)}")
        if idx in self.declared[kind]:
            raise self.error(pos, f"variable {kind}_{idx} declared twice")
        self.declared[kind].add(idx)

    def formula_arg(self, frame: _Frame, value):
        """Check that an argument of ``and``/``or``/``assert`` is a formula."""
        if isinstance(value, _Lin) or value is None:
            raise self.error(frame.pos, f"'{frame.head}' expects formulas, got a term")
        return value

    def term_args(self, frame: _Frame) -> list[_Lin]:
        """The arguments of an arithmetic operator or comparison, checked to be terms."""
        if not frame.args:
            raise self.error(frame.pos, f"'{frame.head}' needs arguments")
        for a in frame.args:
            if not isinstance(a, _Lin):
                raise self.error(frame.pos, f"'{frame.head}' expects terms, got a formula")
        return frame.args

    def term(self, frame: _Frame) -> _Lin:
        """Evaluate ``+``, ``-`` or ``*`` over linear terms."""
        args = self.term_args(frame)
        if frame.head == "+":
            return _lin_sum(args, [1.0] * len(args))
        if frame.head == "-":
            if len(args) == 1:
                return _lin_sum(args, [-1.0])
            return _lin_sum(args, [1.0] + [-1.0] * (len(args) - 1))
        return self.product(frame, args)

    def product(self, frame: _Frame, args: list[_Lin]) -> _Lin:
        """``(* ...)`` where at most one factor is not a constant."""
        scale = 1.0
        variable: _Lin | None = None
        for a in args:
            if not a.coefs:
                scale *= a.const
            elif variable is None:
                variable = a
            else:
                raise self.error(frame.pos, "unsupported: nonlinear product of variables")
        if variable is None:
            return _Lin({}, scale)
        return _lin_sum([variable], [scale])

    # -- comparisons ----------------------------------------------------------------------
    def compare(self, op: str, args: list[_Lin], where: Where) -> list[int] | None:
        """Atoms of ``(op a b ...)`` (chains ANDed pairwise); ``None`` when constantly false."""
        if len(args) < 2:
            raise self.error(where, f"'{op}' needs two terms")
        sense = _COMPARISONS[op]
        atoms: list[int] = []
        for a, b in zip(args, args[1:]):
            part = self.linear(a, b, sense, where)
            if part is None:
                return None
            atoms += part
        return atoms

    def linear(self, a: _Lin, b: _Lin, sense: str, where: Where) -> list[int] | None:
        """Classify ``a - b (<=|>=|=) 0`` as a constant, an input bound or output rows."""
        diff = _lin_sum([a, b], [1.0, -1.0])
        coefs = {v: c for v, c in diff.coefs.items() if c != 0.0}
        rhs = -diff.const
        if not math.isfinite(rhs) or not all(map(math.isfinite, coefs.values())):
            raise self.error(where, "number out of range: the arithmetic of this comparison overflows")
        if not coefs:
            return [] if _const_holds(rhs, sense) else None
        kinds = {k for k, _ in coefs}
        if kinds == {"Y"}:
            row = tuple(sorted((j, c) for (_, j), c in coefs.items()))
            return self.store.y_rows(row, rhs, sense)
        if len(kinds) == 2:
            raise self.error(where, "unsupported: constraint mixes inputs X and outputs Y")
        if len(coefs) > 1:
            names = ", ".join(f"X_{j}" for _, j in sorted(coefs))
            raise self.error(where, f"unsupported: input constraint over several inputs ({names})")
        ((_, var), coef), = coefs.items()
        return self.store.x_bounds(var, rhs / coef, sense if coef > 0 else _FLIP[sense])

    # -- interpreting runs ----------------------------------------------------------------
    def run_pieces(self) -> np.ndarray:
        """Piece id of every run position (each distinct atom string is interpreted once)."""
        if not self.n_positions:
            return np.zeros(0, dtype=np.int64)
        joined = "".join([self.text[s:e] for s, e in self.run_spans])
        parts = joined.split(")")
        parts.pop()  # whitespace after the last ')'
        uniq = list(dict.fromkeys(parts))
        index = dict(zip(uniq, range(len(uniq))))
        pieces = self.interpret(uniq, parts)
        return pieces[np.fromiter(map(index.__getitem__, parts), dtype=np.int64, count=len(parts))]

    def interpret(self, uniq: list[str], parts: list[str]) -> np.ndarray:
        """Piece ids of distinct atom strings: ``(op VAR number)`` in bulk, the rest one by one.

        An atom string counts as simple only when its operator, declared variable (canonical
        spelling) and finite number all check out; anything else, errors included, goes through
        :meth:`flat_generic`, which reports the problem with its position.
        """
        pieces = np.empty(len(uniq), dtype=np.int64)
        columns = self.all_simple_columns(uniq)
        if columns is not None:
            simple, generic = np.arange(len(uniq)), []
        else:
            simple, columns = self.simple_columns(uniq)
            generic = sorted(set(range(len(uniq))) - set(simple.tolist()))
        self.add_simple(pieces, simple, *columns)
        for i in generic:
            where = lambda i=i: self.locate(parts, uniq[i])  # noqa: E731
            pieces[i] = self.store.add_piece(self.flat_generic(uniq[i], where))
        return pieces

    def all_simple_columns(self, uniq: list[str]) -> tuple[np.ndarray, ...] | None:
        """(sense, variable code, value) of every atom string, or None unless all are simple.

        All strings are tokenized by one ``split``. The columns line up with the strings when
        there are exactly three tokens per string and every token has the class of its column
        (each string starts with an operator, and operators only occur in the first column).
        """
        n = len(uniq)
        tokens = ")".join(uniq).replace("(", " ").replace(")", " ").split()
        if len(tokens) != 3 * n:
            return None
        sense = np.fromiter(map(_SENSE_CODE.get, tokens[0::3], itertools.repeat(-1)),
                            dtype=np.int8, count=n)
        codes = self.var_codes()
        code = np.fromiter(map(codes.get, tokens[1::3], itertools.repeat(_NOT_A_VAR)),
                           dtype=np.int64, count=n)
        numbers = tokens[2::3]
        distinct = list(dict.fromkeys(numbers))
        if (sense < 0).any() or (code == _NOT_A_VAR).any() or not all(map(_NUM_RE.match, distinct)):
            return None
        value_of = dict(zip(distinct, map(float, distinct)))
        value = np.fromiter(map(value_of.__getitem__, numbers), dtype=np.float64, count=n)
        return (sense, code, value) if np.isfinite(value).all() else None

    def simple_columns(self, uniq: list[str]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Indices of the simple atom strings and their (sense, variable code, value)."""
        toks = [p.replace("(", " ").split() for p in uniq]
        names = self.var_codes()
        numbers = {n: float(n) for n in {t[2] for t in toks if len(t) == 3} if _NUM_RE.match(n)}
        simple = [i for i, t in enumerate(toks) if len(t) == 3 and t[0] in _SENSE_CODE
                  and t[1] in names and math.isfinite(numbers.get(t[2], math.inf))]
        n = len(simple)
        sense = np.fromiter((_SENSE_CODE[toks[i][0]] for i in simple), dtype=np.int8, count=n)
        code = np.fromiter((names[toks[i][1]] for i in simple), dtype=np.int64, count=n)
        value = np.fromiter((numbers[toks[i][2]] for i in simple), dtype=np.float64, count=n)
        return np.asarray(simple, dtype=np.int64), (sense, code, value)

    def add_simple(self, pieces: np.ndarray, which: np.ndarray, sense: np.ndarray,
                   code: np.ndarray, value: np.ndarray) -> None:
        """Register simple atoms (input bounds in bulk) and store their ids in ``pieces[which]``."""
        x = code >= 0
        pieces[which[x]] = self.store.add_bound_pieces(code[x], value[x], sense[x])
        for i, c, v, sn in zip(which[~x].tolist(), code[~x].tolist(), value[~x].tolist(),
                               sense[~x].tolist()):
            rows = self.store.y_rows(((-c - 1, 1.0),), v, _SENSE_NAME[sn])
            pieces[i] = self.store.add_piece(rows)

    def var_codes(self) -> dict[str, int]:
        """Canonical names of the declared variables: ``X_i`` -> ``i``, ``Y_j`` -> ``-j - 1``."""
        codes = {f"X_{i}": i for i in self.declared["X"]}
        codes.update({f"Y_{j}": -j - 1 for j in self.declared["Y"]})
        return codes

    def locate(self, parts: list[str], part: str) -> int:
        """Text position where the first occurrence of the run atom string ``part`` begins."""
        k = parts.index(part)
        lead = len(part) - len(part.lstrip())
        paren = sum(len(p) + 1 for p in parts[:k]) + lead  # its '(' in the joined runs
        starts = list(itertools.accumulate((e - s for s, e in self.run_spans), initial=0))
        r = bisect.bisect_right(starts, paren) - 1
        return self.run_spans[r][0] + paren - starts[r] - lead

    def flat_generic(self, part: str, where: Callable[[], int]) -> list[int] | None:
        """Atoms of a flat comparison that is not ``(op VAR number)``."""
        toks = [(t.group(), t.start()) for t in _FLAT_TOKEN.finditer(part)]
        (op, op_at), rest = toks[0], toks[1:]
        if op not in _COMPARISONS:
            raise self.error(lambda: where() + op_at, f"unsupported construct {_show(op)}")
        args = []
        for tok, at in rest:
            value = self.argument(tok, lambda at=at: where() + at)
            if not isinstance(value, _Lin):
                raise self.error(lambda: where() + at, f"'{op}' expects terms, got {_show(tok)}")
            args.append(value)
        return self.compare(op, args, lambda: where() + op_at)

    def check_pending(self) -> None:
        """Raise for a variable used in a nested term that the file never declares."""
        for (kind, idx), where in self.pending.items():
            if idx not in self.declared[kind]:
                raise self.error(where, f"undeclared variable {kind}_{idx}")


def _show(tok: str, limit: int = 40) -> str:
    """A printable, single-line, shortened rendering of a token."""
    return ascii(tok[:limit]) + ("..." if len(tok) > limit else "")


def _const_holds(rhs: float, sense: str) -> bool:
    """Truth of ``0 (<=|>=|=) rhs``."""
    if sense == "le":
        return 0.0 <= rhs
    if sense == "ge":
        return 0.0 >= rhs
    return rhs == 0.0


def _lin_sum(terms: list[_Lin], weights: list[float]) -> _Lin:
    """``sum w * t`` over linear terms."""
    coefs: dict[tuple[str, int], float] = {}
    const = 0.0
    for t, w in zip(terms, weights):
        const += w * t.const
        for v, c in t.coefs.items():
            coefs[v] = coefs.get(v, 0.0) + w * c
    return _Lin(coefs, const)


def _conjoin(values: list, limit_error: Callable[[], SpecError]) -> Conj | _Dnf:
    """AND of formulas in DNF: shared leaves stay in ``common``, disjunctions multiply out.

    A ``range`` value is a run of sibling comparisons, i.e. the conjunction of its positions.
    """
    common: Conj = []
    factors: list[list[Conj]] = []
    for v in values:
        if isinstance(v, range):
            common.append(v)
        elif isinstance(v, list):
            common.extend(v)
        elif not v.cases:
            return _false()
        else:
            common.extend(v.common)
            if len(v.cases) == 1:
                common.extend(v.cases[0])
            else:
                factors.append(v.cases)
    if not factors:
        return common
    cases = factors[0]
    for f in factors[1:]:
        if len(cases) * len(f) > MAX_CASES:
            raise limit_error()
        cases = [a + b for a in cases for b in f]
    return _Dnf(common, cases)


def _disjoin(values: list, limit_error: Callable[[], SpecError]) -> Conj | _Dnf:
    """OR of formulas in DNF (the list of all their disjuncts)."""
    cases: list[Conj] = []
    for v in values:
        if isinstance(v, range):
            cases.extend([range(i, i + 1)] for i in v)
        elif isinstance(v, list):
            cases.append(v)
        elif v.common:
            cases.extend(v.common + c for c in v.cases)
        else:
            cases.extend(v.cases)
        if len(cases) > MAX_CASES:
            raise limit_error()
    if len(cases) == 1:
        return cases[0]
    return _Dnf([], cases)


# -- assembling tensors -------------------------------------------------------------------
@dataclass
class _Tables:
    """Numpy views of the atoms and pieces, to expand DNF leaves into atoms in bulk."""

    kind: np.ndarray
    idx: np.ndarray
    val: np.ndarray
    piece_start: np.ndarray
    piece_count: np.ndarray
    piece_false: np.ndarray
    piece_atoms: np.ndarray
    run_piece: np.ndarray  # piece of leaf p >= 0
    nested_piece: np.ndarray  # piece of leaf -k-1

    @classmethod
    def build(cls, parser: _Parser, run_piece: np.ndarray) -> _Tables:
        """Gather the parser's atoms and pieces into arrays."""
        store = parser.store
        return cls(kind=np.asarray(store.kind, dtype=np.int8),
                   idx=np.asarray(store.idx, dtype=np.int64),
                   val=np.asarray(store.val, dtype=np.float64),
                   piece_start=np.asarray(store.piece_start, dtype=np.int64),
                   piece_count=np.asarray(store.piece_count, dtype=np.int64),
                   piece_false=np.asarray(store.piece_false, dtype=bool),
                   piece_atoms=np.asarray(store.piece_atoms, dtype=np.int64), run_piece=run_piece,
                   nested_piece=np.asarray(parser.nested_piece, dtype=np.int64))

    def expand(self, conjs: list[Conj]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For conjunctions ``conjs``: (case of each atom, atom ids in order, case is false)."""
        seg_case, seg_start, seg_len = [], [], []
        for c, conj in enumerate(conjs):
            for r in conj:
                seg_case.append(c)
                seg_start.append(r.start)
                seg_len.append(len(r))
        leaves, leaf_case = _concat_ranges(np.asarray(seg_start, dtype=np.int64),
                                           np.asarray(seg_len, dtype=np.int64),
                                           np.asarray(seg_case, dtype=np.int64))
        neg = leaves < 0
        piece = np.empty_like(leaves)
        piece[~neg] = self.run_piece[leaves[~neg]]
        piece[neg] = self.nested_piece[-leaves[neg] - 1]
        false = np.zeros(len(conjs), dtype=bool)
        false[leaf_case[self.piece_false[piece]]] = True
        pos, atom_case = _concat_ranges(self.piece_start[piece], self.piece_count[piece], leaf_case)
        return atom_case, self.piece_atoms[pos], false


def _concat_ranges(starts: np.ndarray, lens: np.ndarray,
                   labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenation of ``range(s, s + n)`` over the segments, and each element's label."""
    total = int(lens.sum())
    offsets = np.cumsum(lens) - lens
    values = np.repeat(starts - offsets, lens) + np.arange(total, dtype=np.int64)
    return values, np.repeat(labels, lens)


def _resolve_size(declared: set[int], given: int | None, kind: str, name: str) -> int:
    """Number of variables of ``kind`` (max declared index + 1), checked against ``given``."""
    n = max(declared) + 1 if declared else 0
    if kind == "X" and n == 0:
        raise SpecError(f"{name}: no input variable X_i is declared")
    if given is not None and given != n:
        what = "inputs" if kind == "X" else "outputs"
        raise SpecError(f"{name}: the property declares {n} {what} but {given} were expected")
    if kind == "X" and len(declared) != n:  # an undeclared input would have no bounds
        missing = min(set(range(n)) - declared)
        raise SpecError(f"{name}: input variables must be numbered X_0 ... X_{n - 1} without gaps: X_{n - 1} is "
                        f"declared but X_{missing} is not ({len(declared)} inputs declared)")
    return n


def _boxes(t: _Tables, case_of: np.ndarray, atoms: np.ndarray, n_cases: int,
           base: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-case input boxes: ``base`` tightened by the bound atoms of each case."""
    lower = np.repeat(base[0][None], n_cases, axis=0)
    upper = np.repeat(base[1][None], n_cases, axis=0)
    kind = t.kind[atoms]
    for k, arr, ufunc in ((_LOWER, lower, np.maximum), (_UPPER, upper, np.minimum)):
        sel = atoms[kind == k]
        ufunc.at(arr, (case_of[kind == k], t.idx[sel]), t.val[sel])
    return lower, upper


def _case_rows(t: _Tables, common_rows: np.ndarray, case_of: np.ndarray, atoms: np.ndarray,
               n_cases: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deduplicated (case, slot, row id) triples: common rows first, then each case's rows."""
    is_row = t.kind[atoms] == _ROW
    case = np.concatenate([np.repeat(np.arange(n_cases), len(common_rows)), case_of[is_row]])
    row = np.concatenate([np.tile(common_rows, n_cases), t.idx[atoms[is_row]]])
    order = np.argsort(case, kind="stable")  # keeps file order inside each case
    case, row = case[order], row[order]
    n_ids = int(row.max()) + 1 if len(row) else 1
    _, first = np.unique(case * n_ids + row, return_index=True)
    first.sort()
    case, row = case[first], row[first]
    slot = np.arange(len(case)) - np.searchsorted(case, np.arange(n_cases))[case]
    return case, slot, row


def _check_size(count: int, what: str, name: str) -> None:
    """Refuse a result tensor of more than :data:`MAX_ELEMENTS` values before allocating it."""
    if count > MAX_ELEMENTS:
        raise SpecError(f"{name}: the property is too large: its {what} would need {count} values"
                        f" (at most {MAX_ELEMENTS})")


def _row_matrix(row_ids: dict[tuple, int], n_outputs: int,
                name: str = "<vnnlib>") -> tuple[np.ndarray, np.ndarray]:
    """Dense ``[n_rows + 1, n_outputs]`` rows and right-hand sides; the last row, the padding of
    short cases, is ``0 . y <= 1``: true of every output with a strictly negative margin, so a
    case with fewer rows (or none: ``(assert (and))``) can still be witnessed."""
    _check_size((len(row_ids) + 1) * n_outputs, "distinct output constraints", name)
    mat = np.zeros((len(row_ids) + 1, n_outputs))
    rhs = np.zeros(len(row_ids) + 1)
    rhs[-1] = 1.0
    for (coefs, r), rid in row_ids.items():
        for j, c in coefs:
            mat[rid, j] = c
        rhs[rid] = r
    return mat, rhs


def _output_rows(t: _Tables, row_ids: dict[tuple, int], n_outputs: int, common_rows: np.ndarray,
                 keep: np.ndarray, case_of: np.ndarray, atoms: np.ndarray,
                 name: str = "<vnnlib>") -> tuple[np.ndarray, np.ndarray]:
    """Padded ``C`` ``[n_kept, n_rows, n_outputs]`` and ``d`` of the kept cases."""
    n_kept = int(keep.sum())
    sel = keep[case_of]
    renumber = np.cumsum(keep) - 1
    case, slot, row = _case_rows(t, common_rows, renumber[case_of[sel]], atoms[sel], n_kept)
    width = max(1, int(slot.max(initial=0)) + 1)
    _check_size(n_kept * width * n_outputs, f"{n_kept} cases x {width} rows x {n_outputs} outputs", name)
    mat, rhs = _row_matrix(row_ids, n_outputs, name)
    row_index = np.full((n_kept, width), len(mat) - 1)
    row_index[case, slot] = row
    return mat[row_index], rhs[row_index]


def _build_spec(parser: _Parser, run_piece: np.ndarray, formula: Conj | _Dnf, n_inputs: int,
                n_outputs: int) -> Spec:
    """Turn the DNF over leaves into the padded tensors of a :class:`Spec`."""
    if isinstance(formula, list):
        formula = _Dnf(formula, [[]])
    t = _Tables.build(parser, run_piece)
    com_case, com_atoms, com_false = t.expand([formula.common])
    unbounded = (np.full(n_inputs, -np.inf), np.full(n_inputs, np.inf))
    base_lo, base_up = _boxes(t, com_case, com_atoms, 1, unbounded)
    cases = [] if com_false[0] else formula.cases
    _check_size(len(cases) * n_inputs, f"input boxes ({len(cases)} cases x {n_inputs} inputs)", parser.name)
    case_of, atoms, false = t.expand(cases)
    lower, upper = _boxes(t, case_of, atoms, len(cases), (base_lo[0], base_up[0]))
    keep = ~false & (lower <= upper).all(axis=1)  # an input left without a bound keeps -inf / inf
    common_rows = t.idx[com_atoms[t.kind[com_atoms] == _ROW]]
    C, d = _output_rows(t, parser.store.row_ids, n_outputs, common_rows, keep, case_of, atoms, parser.name)
    return Spec(lower=torch.from_numpy(np.ascontiguousarray(lower[keep])),
                upper=torch.from_numpy(np.ascontiguousarray(upper[keep])),
                C=torch.from_numpy(C), d=torch.from_numpy(d))


# -- public API ---------------------------------------------------------------------------
def parse_vnnlib_text(text: str, n_inputs: int | None = None, n_outputs: int | None = None,
                      name: str = "<vnnlib>") -> Spec:
    """Parse VNN-LIB text into a :class:`Spec`; ``name`` prefixes error messages.

    ``n_inputs``/``n_outputs``, when given, must equal the declared counts (max index + 1).
    Cases whose input box is empty are dropped, so the result may have zero cases (an empty
    unsafe set: the property holds trivially).
    """
    parser = _Parser(text, name)
    formula = parser.parse()
    run_piece = parser.run_pieces()  # needs every declaration
    parser.check_pending()
    n_in = _resolve_size(parser.declared["X"], n_inputs, "X", name)
    n_out = _resolve_size(parser.declared["Y"], n_outputs, "Y", name)
    return _build_spec(parser, run_piece, formula, n_in, n_out)


def _read_text(path: Path) -> str:
    """File contents as text, gunzipped when it starts with the gzip magic bytes."""
    name = path.name if len(path.name) <= 80 else path.name[:80] + "..."
    try:
        irregular = path.exists() and not path.is_file()
    except OSError as exc:  # e.g. ENAMETOOLONG, which exists() does not swallow
        raise SpecError(f"{name}: cannot read file: {exc.strerror or exc}") from None
    if irregular:  # a FIFO or device would block the read
        raise SpecError(f"{name}: not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{name}: cannot read file: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise SpecError(f"{name}: corrupt gzip data: {exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecError(f"{name}:{line}: not a text file (invalid UTF-8 byte)") from None


def parse_vnnlib_file(path: str | Path, n_inputs: int | None = None,
                      n_outputs: int | None = None) -> Spec:
    """Parse a VNN-LIB file (plain or gzip, detected by its magic bytes) into a :class:`Spec`."""
    path = Path(path)
    return parse_vnnlib_text(_read_text(path), n_inputs, n_outputs, name=path.name)
