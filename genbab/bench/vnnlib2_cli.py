"""``genbab vnnlib2``: the VNN-LIB 2.0 solver command line (standard, chapter 5).

    genbab vnnlib2 verify QUERY --network NAME=MODEL.onnx [--timeout S]
    genbab vnnlib2 supports --onnx-operators        (or any other capability flag)
    genbab vnnlib2 --name | --version

``verify`` prints one result line on stdout, ``sat``, ``unsat``, ``unknown`` or ``timed-out``;
after ``sat`` the assignment: each declared variable as ``NAME TYPE [SHAPE]`` and then its
values, one per line, row-major. Problems go to stderr with nothing on stdout: exit 2 for a query
or model genbab cannot use, 1 for an internal error.
``vnncomp/vnnlib2_solver`` wraps this as one executable, as solver test suites expect; it runs
this file by path, so the module imports only the standard library and click at the top (genbab,
and with it torch, is imported only where an answer needs it).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

EXIT_MARGIN_S = 2.5  # genbab honours its budget within 2 s; answer before the caller's deadline
CAPABILITIES = {
    "onnx-opset-versions": "two lines: the minimum and maximum ONNX opset versions",
    "onnx-element-types": "one element type per line",
    "onnx-operators": "one ONNX operator per line",
    "vnnlib-versions": "two lines: the minimum and maximum VNN-LIB versions",
    "hidden-node-theories": "one theory per line",
    "multiple-input-output-theories": "one theory per line",
    "multiple-network-theories": "one theory per line",
    "multiple-node-comparison-theories": "one theory per line",
    "arithmetic-complexity-theories": "one theory per line",
    "optimised-disjunctive-reasoning": "true or false",
    "serialise-assignments": "true or false",
}
FIXED_ANSWERS = {
    "onnx-element-types": ["float32", "float64"],
    "vnnlib-versions": ["2.0", "2.0"],  # VNN-LIB 1.0 files go to `genbab verify`
    "hidden-node-theories": ["NH", "H"],  # hidden nodes: extra outputs of the composed model
    "multiple-input-output-theories": ["SIO", "MIO"],
    # several networks, independent (MNET), equal-to (MENET) or isomorphic-to (MINET) another
    "multiple-network-theories": ["SNET", "MNET", "MENET", "MINET"],
    "multiple-node-comparison-theories": ["SNC", "MNC"],  # comparisons across networks and nodes
    # linear constraints over inputs, outputs or both: input bounds form the box, other input
    # terms are read from a copy of the input among the composed model's outputs
    "arithmetic-complexity-theories": ["BND", "OUTC", "LIN"],
    "optimised-disjunctive-reasoning": ["true"],  # all disjuncts are attacked and bounded together
    "serialise-assignments": ["true"],
}


def onnx_operators() -> list[str]:
    """The ONNX operators genbab translates (onnx2torch's and genbab's converters, LSTM/GRU unrolled)."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY

    from genbab.model.converters import register_converters

    register_converters()
    ops = {d.operation_type for d in _CONVERTER_REGISTRY if d.domain in ("", "ai.onnx")}
    return sorted(ops | {"LSTM", "GRU"})


def opset_versions() -> list[str]:
    """Oldest opset genbab upgrades from, newest opset a translator exists for."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY

    newest = max(d.version for d in _CONVERTER_REGISTRY if d.domain in ("", "ai.onnx"))
    return ["1", str(newest)]


def answer(capability: str) -> list[str]:
    """The lines that answer one ``supports`` capability."""
    if capability == "onnx-operators":
        return onnx_operators()
    if capability == "onnx-opset-versions":
        return opset_versions()
    return FIXED_ANSWERS[capability]


def seconds_since_process_start() -> float:
    """Wall time since this process started (Linux /proc; 0 elsewhere): start-up counts against --timeout."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class _Group(click.Group):
    """Accepts ``capabilities`` as another spelling of ``supports`` (the standard uses both)."""

    def get_command(self, ctx: click.Context, name: str):
        return super().get_command(ctx, "supports" if name == "capabilities" else name)


@click.group("vnnlib2", cls=_Group, invoke_without_command=True)
@click.option("--name", "show_name", is_flag=True, help="Print the solver's name.")
@click.option("--version", "show_version", is_flag=True, help="Print the solver's version.")
@click.pass_context
def vnnlib2(ctx: click.Context, show_name: bool, show_version: bool) -> None:
    """VNN-LIB 2.0 solver interface: verify a query, report capabilities."""
    if show_name and show_version:
        raise click.UsageError("--name and --version are mutually exclusive")
    if show_name:
        click.echo("genbab")
    elif show_version:
        from genbab import __version__

        click.echo(__version__)
    elif ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(1)


@vnnlib2.command("supports")
def supports(**flags: bool) -> None:
    """Report one capability (exactly one flag)."""
    chosen = [c for c in CAPABILITIES if flags.get(flag_dest(c))]
    if flags.get("multiple_inputs_output_theories"):  # the spelling of the standard's example
        chosen.append("multiple-input-output-theories")
    if len(chosen) != 1:
        raise click.UsageError("give exactly one capability flag: " + ", ".join(f"--{c}" for c in CAPABILITIES))
    click.echo("\n".join(answer(chosen[0])))


def flag_dest(capability: str) -> str:
    return capability.replace("-", "_")


for _capability, _help in [*CAPABILITIES.items(), ("multiple-inputs-output-theories", None)]:
    supports.params.append(click.Option([f"--{_capability}", flag_dest(_capability)], is_flag=True,
                                        help=_help, hidden=_help is None))


@vnnlib2.command("verify")
@click.argument("query", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--network", "networks", multiple=True, metavar="NAME=PATH", help="The model of a declared network.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="Seconds for the whole run, start-up included.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the attack's random restarts.")
def verify(query: Path, networks: tuple[str, ...], timeout: float, seed: int) -> None:
    """Answer the VNN-LIB 2.0 QUERY: sat (with the assignment), unsat, unknown or timed-out."""
    from genbab.errors import GenbabError

    # start-up counts when this process was started for this query (not when called in-process)
    startup = seconds_since_process_start() if str(query) in sys.argv else 0.0
    deadline = time.monotonic() + timeout - startup - EXIT_MARGIN_S
    try:
        text = run_query(query, parse_networks(networks), deadline, seed)
    except GenbabError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except Exception as err:  # an internal error: one line, the traceback only on request
        if os.environ.get("GENBAB_DEBUG"):
            import traceback

            traceback.print_exc()
        click.echo(f"internal error: {type(err).__name__}: {err} (set GENBAB_DEBUG=1 for a traceback)", err=True)
        sys.exit(1)
    click.echo(text, nl=False)


def parse_networks(tokens: tuple[str, ...]) -> dict[str, Path]:
    """``{name: model path}`` from ``--network NAME=PATH`` options."""
    from genbab.errors import SpecError

    out: dict[str, Path] = {}
    for token in tokens:
        name, sep, path = token.partition("=")
        if not sep or not name or not path:
            raise SpecError(f"--network takes NAME=PATH, got {token!r}")
        if name in out:
            raise SpecError(f"--network {name} given twice")
        out[name] = Path(path)
    return out


def run_query(query_path: Path, networks: dict[str, Path], deadline: float, seed: int) -> str:
    """Load the query and its models, verify until ``deadline``; the stdout text of the answer.

    A query over one network with one input and one output is verified on that model; any other
    (several networks, inputs or outputs, hidden nodes, linear input constraints) on the one model
    :func:`genbab.model.compose.compose_query` builds, its witness re-checked on the originals."""
    from genbab.spec.vnnlib2 import QueryError, load_query

    query = load_query(query_path)
    wanted = query.model_networks()
    if set(networks) != set(wanted):
        given = ", ".join(sorted(networks)) or "none"
        if len(wanted) == 1:
            raise QueryError(f"the query declares network {wanted[0]!r}; give exactly --network {wanted[0]}=MODEL "
                             f"(got {given})")
        raise QueryError(f"the query declares networks {', '.join(map(repr, wanted))}; give --network NAME=MODEL for "
                         f"each (got {given})")
    if query.simple:
        return run_simple(query, networks[query.network], deadline, seed)
    return run_composed(query, networks, deadline, seed)


def run_simple(query, model_path: Path, deadline: float, seed: int) -> str:
    """One network, one input, one output: genbab on the model itself (loaded by
    :func:`genbab.verify`, which also decides a model whose output ignores its input, such as
    ``Shape(X)``, on that constant output)."""
    import genbab
    from genbab.spec.vnnlib2 import search_spec, witness_satisfies

    budget = deadline - time.monotonic()
    if budget <= 0:
        return "timed-out\n"
    result = genbab.verify(model_path, search_spec(query), timeout=budget, seed=seed)
    if result.status == "sat" and result.witness is not None:
        w = result.witness
        if not witness_satisfies(query, w.case, w.x.astype("float64"), w.y.astype("float64")):
            print("note: genbab's witness meets the query only with its strict comparisons read as non-strict;"
                  " answering unknown", file=sys.stderr)
            return "unknown\n"
        lines = ["sat", query.input.header(), *value_lines(query.input, w.x),
                 query.output.header(), *value_lines(query.output, w.y)]
        return "\n".join(lines) + "\n"
    return no_witness_answer(query, result)


def no_witness_answer(query, result) -> str:
    """The answer line of a result without a witness; ``unknown`` for a query that leaves an input
    unbounded (genbab then only attacks) says so on stderr."""
    name = query.unbounded_input() if result.status == "unknown" else None
    if name is not None:
        print(f"note: input {name} is unbounded: only an attack was run", file=sys.stderr)
    return {"unsat": "unsat\n", "timeout": "timed-out\n"}.get(result.status, "unknown\n")


def value_lines(decl, values) -> list[str]:
    """One line per value of a declared variable: integers for integer and boolean types (an
    ``int64`` output such as ``Shape(X)`` reads ``3``), else the shortest round-tripping float."""
    if decl.dtype.startswith(("int", "uint")) or decl.dtype == "bool":
        return [str(int(v)) for v in values]
    return [repr(float(v)) for v in values]


def run_composed(query, networks: dict[str, Path], deadline: float, seed: int) -> str:
    """Several networks, inputs, outputs or hidden nodes: genbab on the composed model; a witness
    is re-checked (and its assignment computed) on the original networks with onnxruntime."""
    import tempfile

    import genbab
    from genbab.model.compose import compose_query, evaluate_query
    from genbab.model.onnx_io import read_onnx
    from genbab.spec.vnnlib2 import search_spec, witness_satisfies

    models = {name: read_onnx(path) for name, path in networks.items()}
    composed = compose_query(query, models)
    with tempfile.TemporaryDirectory(prefix="genbab-query-") as tmp:
        path = Path(tmp) / "composed.onnx"
        path.write_bytes(composed.SerializeToString())
        budget = deadline - time.monotonic()
        if budget <= 0:
            return "timed-out\n"
        result = genbab.verify(path, search_spec(query), timeout=budget, seed=seed)
    if result.status == "sat" and result.witness is not None:
        x = result.witness.x
        y, values = evaluate_query(query, models, x)
        cases = [result.witness.case, *range(query.spec.n_cases)]
        if not any(witness_satisfies(query, k, x.astype("float64"), y) for k in cases):
            print("note: genbab's witness does not meet the exact query on the original networks; answering unknown",
                  file=sys.stderr)
            return "unknown\n"
        lines = ["sat"]
        for net in query.networks:
            for decl in net.variables():
                lines += [decl.header(), *value_lines(decl, values[decl.name].reshape(-1))]
        return "\n".join(lines) + "\n"
    return no_witness_answer(query, result)


if __name__ == "__main__":  # run by path from vnncomp/vnnlib2_solver: `supports` answers without importing torch
    vnnlib2(prog_name="vnnlib2_solver")
