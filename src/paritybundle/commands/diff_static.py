"""What differs between two bundles without running them: specs (and whether B can replace A),
preprocessing steps and fitted statistics, graphs, tolerance policy, provenance."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Literal

import numpy as np

from ..bundle.external_data import external_locations, load_graph, mentions_external_data, proto_text
from ..bundle.manifest import Manifest, PreprocessColumn, Preprocessing, TensorSpec, TolerancePolicy
from ..bundle.store import VerifiedBundle
from .diff_models import (
    Compatibility,
    FieldChange,
    GraphDiff,
    GraphSummary,
    PreprocessingDiff,
    SpecDifference,
    StatisticChange,
)

# --- specs and compatibility ------------------------------------------------------------------


def _shape(spec: TensorSpec) -> str:
    return "[" + ", ".join(map(str, spec.shape)) + "]"


def _shape_problem(a: TensorSpec, b: TensorSpec, role: str) -> str | None:
    """Why B's shape breaks a client of A's (None: compatible). For inputs B must accept
    everything A accepted; for outputs B must give what A's clients read."""
    if len(a.shape) != len(b.shape):
        return f"{role} {a.name!r} has {len(a.shape)} dimensions in A, {len(b.shape)} in B"
    for axis, (da, db) in enumerate(zip(a.shape, b.shape, strict=True)):
        if isinstance(da, int) and isinstance(db, int) and da != db:
            return f"{role} {a.name!r} dimension {axis} is {da} in A, {db} in B"
        if role == "input" and isinstance(da, str) and isinstance(db, int):
            return f"input {a.name!r} dimension {axis} is variable ({da}) in A but fixed to {db} in B"
        if role == "output" and isinstance(da, int) and isinstance(db, str):
            return f"output {a.name!r} dimension {axis} is {da} in A but variable ({db}) in B"
    return None


def spec_differences(a: Manifest, b: Manifest) -> list[SpecDifference]:
    """Every input/output that differs, with whether it breaks a client of A."""
    found: list[SpecDifference] = []
    roles: list[tuple[Literal["input", "output"], list[TensorSpec], list[TensorSpec]]] = [
        ("input", a.inputs, b.inputs),
        ("output", a.outputs, b.outputs),
    ]
    for kind, specs_a, specs_b in roles:
        by_a, by_b = {s.name: s for s in specs_a}, {s.name: s for s in specs_b}
        for name in list(by_a) + [n for n in by_b if n not in by_a]:
            sa, sb = by_a.get(name), by_b.get(name)
            if sa is None:
                breaking = kind == "input"
                detail = (
                    "B requires a new input that A's clients do not send"
                    if breaking
                    else "B adds an output (A's clients ignore it)"
                )
            elif sb is None:
                breaking = True
                detail = (
                    "B no longer takes this input, and refuses requests that send it"
                    if kind == "input"
                    else "B no longer returns this output"
                )
            elif sa == sb:
                continue
            else:
                problems = []
                if sa.dtype != sb.dtype:
                    problems.append(f"dtype {sa.dtype} -> {sb.dtype}")
                shape_problem = _shape_problem(sa, sb, kind)
                if shape_problem:
                    problems.append(shape_problem)
                if kind == "input" and sa.allow_nonfinite and not sb.allow_nonfinite:
                    problems.append("A accepted NaN/inf here, B refuses it")
                breaking = bool(problems)
                notes = []
                if sa.shape != sb.shape and not shape_problem:
                    notes.append(f"shape {_shape(sa)} -> {_shape(sb)}")
                if sa.kind != sb.kind:
                    notes.append(f"kind {sa.kind} -> {sb.kind}")
                if sa.allow_nonfinite != sb.allow_nonfinite and not (kind == "input" and sa.allow_nonfinite):
                    notes.append(f"NaN/inf {'accepted' if sb.allow_nonfinite else 'refused'} in B")
                detail = "; ".join(problems + notes)
            found.append(SpecDifference(kind=kind, name=name, a=sa, b=sb, breaking=breaking, detail=detail))
    return found


def compatibility_of(specs: list[SpecDifference], a: Manifest, b: Manifest) -> Compatibility:
    problems = [f"{d.kind} {d.name!r}: {d.detail}" for d in specs if d.breaking]
    notes = [f"{d.kind} {d.name!r}: {d.detail}" for d in specs if not d.breaking]
    if a.name != b.name:
        notes.append(f"the bundles are named {a.name!r} and {b.name!r}: the V2 model name in request URLs changes")
    return Compatibility(compatible=not problems, problems=problems, notes=notes)


# --- preprocessing -----------------------------------------------------------------------------


def _numbers(value: Any) -> np.ndarray | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return np.array([value], dtype=np.float64)
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return np.asarray(value, dtype=np.float64)
    return None


def _statistic_change(column: str, position: int, kind: str, key: str, va: Any, vb: Any) -> StatisticChange | None:
    if va == vb:
        return None
    na, nb = _numbers(va), _numbers(vb)
    if na is not None and nb is not None and na.shape == nb.shape:
        change = np.abs(nb - na)
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = np.where(np.abs(na) > 0, change / np.abs(na), np.where(change > 0, np.inf, 0.0))
        worst = int(np.argmax(change))
        where = f" (feature {worst})" if na.size > 1 else ""
        return StatisticChange(
            input=column,
            step=position,
            kind=kind,
            key=key,
            summary=f"{key} moved by up to {change.max():.4g}{where}: {na[worst]:.6g} -> {nb[worst]:.6g}",
            max_abs_change=float(change.max()),
            max_rel_change=float(relative.max()),
        )
    if isinstance(va, list) and isinstance(vb, list) and all(isinstance(v, str) for v in va + vb):
        added = [v for v in vb if v not in set(va)]
        removed = [v for v in va if v not in set(vb)]
        parts = ([f"+{added[:10]}" + ("..." if len(added) > 10 else "")] if added else []) + (
            [f"-{removed[:10]}" + ("..." if len(removed) > 10 else "")] if removed else []
        )
        if not parts:
            parts = ["same categories in a new order (indices move)"]
        return StatisticChange(
            input=column,
            step=position,
            kind=kind,
            key=key,
            summary=f"{key} ({len(va)} -> {len(vb)}): " + " ".join(parts),
        )
    return StatisticChange(
        input=column, step=position, kind=kind, key=key, summary=f"{key}: {_short(va)} -> {_short(vb)}"
    )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def preprocessing_diff(a: Preprocessing | None, b: Preprocessing | None) -> PreprocessingDiff | None:
    """Which steps changed, and which fitted constants moved and by how much."""
    if a is None and b is None:
        return None
    structure: list[str] = []
    statistics: list[StatisticChange] = []
    if a is None or b is None:
        structure.append(f"preprocessing {'added in B' if a is None else 'removed in B'}")
        return PreprocessingDiff(
            a_source=a.source if a else None, b_source=b.source if b else None, structure=structure, statistics=[]
        )
    if a.source != b.source:
        structure.append(f"source {a.source} -> {b.source}")
    if [f.model_dump() for f in a.features] != [f.model_dump() for f in b.features]:
        structure.append(
            "features "
            + ", ".join(f"{f.name}{_shape(f)}" for f in a.features)
            + " -> "
            + ", ".join(f"{f.name}{_shape(f)}" for f in b.features)
        )
    columns_a: dict[str, PreprocessColumn] = {c.input: c for c in a.columns}
    columns_b: dict[str, PreprocessColumn] = {c.input: c for c in b.columns}
    for name in list(columns_a) + [n for n in columns_b if n not in columns_a]:
        ca, cb = columns_a.get(name), columns_b.get(name)
        if ca is None or cb is None:
            structure.append(f"column {name!r} {'added in B' if ca is None else 'removed in B'}")
            continue
        if ca.features != cb.features:
            structure.append(f"column {name!r} features {ca.features} -> {cb.features}")
        kinds_a, kinds_b = [s.kind for s in ca.steps], [s.kind for s in cb.steps]
        if kinds_a != kinds_b:
            structure.append(f"column {name!r} steps {kinds_a} -> {kinds_b}")
            continue
        for position, (sa, sb) in enumerate(zip(ca.steps, cb.steps, strict=True)):
            for key in list(sa.params) + [k for k in sb.params if k not in sa.params]:
                change = _statistic_change(name, position, sa.kind, key, sa.params.get(key), sb.params.get(key))
                if change is not None:
                    statistics.append(change)
    return PreprocessingDiff(a_source=a.source, b_source=b.source, structure=structure, statistics=statistics)


# --- graphs --------------------------------------------------------------------------------------


def graph_summary(bundle: VerifiedBundle, file: str) -> GraphSummary:
    """Operator counts, parameter count, opset and size of one of the bundle's graphs (weights not loaded)."""

    path = bundle.path(file)
    model = load_graph(path, f"{file} of {bundle.manifest.name}")
    operators = Counter(_operator(proto_text(n.domain), proto_text(n.op_type)) for n in model.graph.node)
    parameters = sum(math.prod(init.dims) for init in model.graph.initializer)
    size = bundle.manifest.files[file].bytes
    if mentions_external_data(path):
        size += sum(
            bundle.manifest.files[loc].bytes for loc in set(external_locations(path)) if loc in bundle.manifest.files
        )
    opset = next((o.version for o in model.opset_import if proto_text(o.domain) in ("", "ai.onnx")), 0)
    return GraphSummary(
        file=file,
        bytes=size,
        opset=opset,
        ir_version=model.ir_version,
        nodes=len(model.graph.node),
        parameters=int(parameters),
        operators=dict(sorted(operators.items())),
    )


def _operator(domain: str, op_type: str) -> str:
    return f"{domain}:{op_type}" if domain not in ("", "ai.onnx") else op_type


def graph_diff(bundle_a: VerifiedBundle, bundle_b: VerifiedBundle, stage: str) -> GraphDiff | None:
    def file_of(bundle: VerifiedBundle) -> str | None:
        return getattr(bundle.manifest.stages, stage)

    fa, fb = file_of(bundle_a), file_of(bundle_b)
    if fa is None and fb is None:
        return None
    sa = graph_summary(bundle_a, fa) if fa else None
    sb = graph_summary(bundle_b, fb) if fb else None
    ops_a, ops_b = (sa.operators if sa else {}), (sb.operators if sb else {})
    changes = {
        op: [ops_a.get(op, 0), ops_b.get(op, 0)]
        for op in sorted(set(ops_a) | set(ops_b))
        if ops_a.get(op, 0) != ops_b.get(op, 0)
    }
    return GraphDiff(stage=stage, a=sa, b=sb, operator_changes=changes)  # type: ignore[arg-type]


# --- tolerance and provenance ------------------------------------------------------------------


def _changes(pairs: list[tuple[str, Any, Any]]) -> list[FieldChange]:
    return [
        FieldChange(what=what, a=None if va is None else str(va), b=None if vb is None else str(vb))
        for what, va, vb in pairs
        if va != vb
    ]


def tolerance_changes(a: TolerancePolicy, b: TolerancePolicy) -> list[FieldChange]:
    pairs: list[tuple[str, Any, Any]] = [
        ("reference device", a.reference_device, b.reference_device),
        ("reference precision", a.reference_precision, b.reference_precision),
        ("default atol", a.default.atol, b.default.atol),
        ("default rtol", a.default.rtol, b.default.rtol),
        ("default equal_nan", a.default.equal_nan, b.default.equal_nan),
        ("min decision agreement", a.min_decision_agreement, b.min_decision_agreement),
        ("max share of near ties", a.max_tie_share, b.max_tie_share),
        ("baseline factor", a.baseline_factor, b.baseline_factor),
    ]
    for name in sorted(set(a.per_output) | set(b.per_output)):
        ta, tb = a.per_output.get(name), b.per_output.get(name)
        pairs.append(
            (
                f"output {name!r} tolerance",
                ta and f"atol {ta.atol:g}, rtol {ta.rtol:g}",
                tb and f"atol {tb.atol:g}, rtol {tb.rtol:g}",
            )
        )
    return _changes(pairs)


def strength_changes(a: Manifest, b: Manifest) -> list[FieldChange]:
    """Each bundle's detection power and coverage, side by side (shown whether or not they differ)."""

    def rows(m: Manifest) -> str | None:
        c = m.coverage
        return (
            None
            if c is None
            else f"{c.selected} of {c.candidates} offered" + (f" + {c.probes} probes" if c.probes else "")
        )

    pairs: list[tuple[str, Any, Any]] = [
        ("detection power", a.power and a.power.sentence(), b.power and b.power.sentence()),
        ("reference rows", rows(a), rows(b)),
    ]
    for name in sorted(set(a.coverage.classes if a.coverage else {}) | set(b.coverage.classes if b.coverage else {})):
        pairs.append(
            (
                f"classes predicted ({name})",
                a.coverage and len(a.coverage.classes.get(name, [])),
                b.coverage and len(b.coverage.classes.get(name, [])),
            )
        )
    for name in sorted(
        set(a.coverage.categories if a.coverage else {}) | set(b.coverage.categories if b.coverage else {})
    ):
        seen = [m.coverage.categories.get(name) if m.coverage else None for m in (a, b)]
        text = [f"{v.seen} of {v.vocabulary}" if v else None for v in seen]
        pairs.append((f"categories of {name} in the rows", text[0], text[1]))
    return [
        FieldChange(what=what, a=None if va is None else str(va), b=None if vb is None else str(vb))
        for what, va, vb in pairs
    ]


def provenance_changes(a: Manifest, b: Manifest) -> list[FieldChange]:
    pa, pb = a.provenance, b.provenance
    pairs: list[tuple[str, Any, Any]] = [
        ("version", a.version, b.version),
        ("git commit", pa.git and pa.git.commit[:12], pb.git and pb.git.commit[:12]),
        ("git dirty", pa.git and pa.git.dirty, pb.git and pb.git.dirty),
        ("exporter", a.stages.exporter, b.stages.exporter),
        ("reference samples", a.reference.samples, b.reference.samples),
    ]
    for key in sorted(set(pa.params) | set(pb.params)):
        pairs.append((f"param {key}", pa.params.get(key), pb.params.get(key)))
    for key in sorted(set(pa.metrics) | set(pb.metrics)):
        va, vb = pa.metrics.get(key), pb.metrics.get(key)
        shown_b = None if vb is None else (f"{vb:.6g}" + (f" ({vb - va:+.4g})" if va is not None else ""))
        pairs.append(
            (f"metric {key}", None if va is None else f"{va:.6g}", shown_b if va != vb else vb and f"{vb:.6g}")
        )
    for key in sorted(set(pa.data_hashes) | set(pb.data_hashes)):
        pairs.append((f"data {key}", pa.data_hashes.get(key), pb.data_hashes.get(key)))
    for key in sorted(set(a.producer.libraries) | set(b.producer.libraries)):
        pairs.append((f"library {key}", a.producer.libraries.get(key), b.producer.libraries.get(key)))
    return _changes(pairs)
