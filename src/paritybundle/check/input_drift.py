"""``bundle drift BUNDLE CAPTURE``: are production's inputs still inside what the reference set proves?

Each raw input (each column of a ``[batch, F]`` input with a few features) of the captured
traffic is compared with the bundle's reference set and with the statistics the preprocessing
was fitted on (``manifest.preprocessing``):

* numbers: the NaN share, the share outside the reference set's range and outside the fitted
  range (a clip's bounds), and the population stability index over the reference deciles;
* categories: the share of values the reference set never ran (and the most frequent ones), the
  share outside the fitted vocabulary, and the PSI over the reference categories;
* outputs of class scores: the predicted-class mix served against research's on the reference set.

A finding is a value past its threshold; a report with findings exits 1, and its closing sentence
says what the reference set no longer proves.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np

from ..bundle.fitted import fitted_bounds, vocabulary
from ..bundle.manifest import Manifest, TensorSpec
from ..bundle.store import VerifiedBundle, open_bundle
from ..bundle.strict import StrictModel
from ..errors import UsageError
from ..runtime.capture import read_capture
from ..runtime.load import stage_runner
from ..runtime.session import recorded_settings
from .sources import BundleReferences

# A [batch, F] input with at most this many features is drifted column by column; a wider one
# (an image, an embedding) as one distribution of all its values.
MAX_COLUMNS_PER_INPUT = 64
DECILES = 10
_PSI_FLOOR = 1e-4  # a bin empty on one side counts as this share, so the PSI stays finite


class DriftThresholds(StrictModel):
    """Past these, a column (or output) is a finding and ``bundle drift`` exits 1."""

    max_psi: float = 0.25
    max_unseen_share: float = 0.05
    max_out_of_range_share: float = 0.05
    max_nan_increase: float = 0.05
    max_class_shift: float = 0.25


class Histogram(StrictModel):
    """Reference against production, share per bin (labels: ranges or categories), for the HTML page."""

    labels: list[str]
    reference: list[float]
    production: list[float]


class ColumnDrift(StrictModel):
    column: str
    kind: Literal["number", "category"]
    samples: int
    nan_share: float
    reference_nan_share: float
    psi: float | None = None
    reference_range: list[float] | None = None
    outside_reference_range: float | None = None
    fitted_range: list[float] | None = None
    outside_fitted_range: float | None = None
    unseen_share: float | None = None
    unfitted_share: float | None = None
    top_unseen: dict[str, int] = {}
    histogram: Histogram | None = None
    findings: list[str] = []


class OutputMix(StrictModel):
    output: str
    research: dict[str, float]
    production: dict[str, float]
    shift: float  # total variation distance between the two class mixes
    findings: list[str] = []


class InputDriftReport(StrictModel):
    passed: bool
    checked_at: datetime
    bundle: str
    version: str
    capture: str
    samples: int
    requests: int
    reference_samples: int
    thresholds: DriftThresholds
    columns: list[ColumnDrift]
    outputs: list[OutputMix]
    summary: str

    def __bool__(self) -> bool:
        return self.passed


def input_drift(
    path: str | os.PathLike[str],
    capture: str | os.PathLike[str],
    *,
    thresholds: DriftThresholds | None = None,
    public_key: str | os.PathLike[str] | None = None,
) -> InputDriftReport:
    """Captured traffic's inputs (and predicted classes) against the bundle's reference set and fit.

    Raises:
        UsageError: no capture, pyarrow missing, a capture of other inputs, or thresholds below 0.
        BundleInvalid: the bundle fails verification.
    """
    thresholds = thresholds or DriftThresholds()
    if any(not math.isfinite(v) or v < 0 for v in thresholds.model_dump().values()):
        raise UsageError("drift thresholds must be finite numbers >= 0.")
    bundle = open_bundle(path, public_key)
    manifest = bundle.manifest
    data = read_capture(capture, manifest)
    if not data.samples:
        raise UsageError(f"{capture} holds no captured samples; let the server answer some requests first.")
    reference = _reference_arrays(bundle)
    fitted = _fitted(manifest)
    columns = []
    for spec in manifest.inputs:
        production = _concat([g.inputs[spec.name] for g in data.groups])
        if spec.text is not None and manifest.preprocessing is not None and manifest.stages.preprocess:
            served = {s.name: _concat([g.inputs[s.name] for g in data.groups]) for s in manifest.inputs}
            columns += _text_drift(bundle, spec, served, reference["inputs"], thresholds)
            continue
        for label, prod_values, ref_values in _columns(spec, production, reference["inputs"][spec.name]):
            columns.append(_column_drift(label, spec, prod_values, ref_values, fitted.get(label), thresholds))
    outputs = [
        _output_mix(
            spec, _concat([g.outputs[spec.name] for g in data.groups]), reference["outputs"][spec.name], thresholds
        )
        for spec in manifest.outputs
        if spec.kind == "scores"
    ]
    findings = [f for c in columns for f in c.findings] + [f for o in outputs for f in o.findings]
    summary = (
        "production's inputs stay inside what the reference set proves: no column past its threshold."
        if not findings
        else "the reference set no longer proves production's inputs: " + "; ".join(findings) + "."
    )
    return InputDriftReport(
        passed=not findings,
        checked_at=datetime.now(timezone.utc),
        bundle=manifest.name,
        version=manifest.version,
        capture=str(capture),
        samples=data.samples,
        requests=len(set(data.request_ids.tolist())),
        reference_samples=int(next(iter(reference["inputs"].values())).shape[0]) if reference["inputs"] else 0,
        thresholds=thresholds,
        columns=columns,
        outputs=outputs,
        summary=summary,
    )


# --- the reference side ---------------------------------------------------------------------------------


def _reference_arrays(bundle: VerifiedBundle) -> dict[str, dict[str, np.ndarray]]:
    """The reference set's inputs and outputs, every group, flattened per sample where shapes differ."""
    source = BundleReferences(bundle, ("inputs", "outputs"))
    parts: dict[str, dict[str, list[np.ndarray]]] = {"inputs": {}, "outputs": {}}
    for batch in source.batches(max(source.rows, 1)):
        for part in parts:
            for name, array in batch.parts[part].items():
                parts[part].setdefault(name, []).append(np.asarray(array))
    return {part: {name: _concat(arrays) for name, arrays in named.items()} for part, named in parts.items()}


def _concat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Samples of several groups: stacked when their shapes agree, else each sample's values flattened."""
    if len({a.shape[1:] for a in arrays}) == 1:
        return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    flat = [row.reshape(-1) for a in arrays for row in a]
    holder = np.empty(len(flat), dtype=object)
    holder[:] = flat
    return holder


def _fitted(manifest: Manifest) -> dict[str, dict[str, object]]:
    """Per drift column (``name``, or ``name[j]`` for a feature of a wider input): the fitted vocabulary
    and range its preprocessing recorded, by the rules export's coverage uses (:mod:`..bundle.fitted`)."""
    fitted: dict[str, dict[str, object]] = {}
    if manifest.preprocessing is None:
        return fitted
    for column in manifest.preprocessing.columns:
        categories = vocabulary(column)
        if categories is not None:
            fitted[column.input] = {"vocabulary": [str(v) for v in categories]}
        bounds = fitted_bounds(column)
        if bounds is not None:
            lows, highs = bounds
            if len(lows) == 1:
                fitted.setdefault(column.input, {})["range"] = [float(lows[0]), float(highs[0])]
            for feature, (low, high) in enumerate(zip(lows, highs, strict=True)):
                fitted.setdefault(f"{column.input}[{feature}]", {})["range"] = [float(low), float(high)]
    return fitted


def _columns(spec: TensorSpec, production: np.ndarray, reference: np.ndarray):
    """``(label, production values, reference values)`` per column of an input."""
    if (
        production.dtype != object
        and reference.dtype != object
        and production.ndim == 2
        and production.shape[1:] == reference.shape[1:]
        and production.shape[1] <= MAX_COLUMNS_PER_INPUT
        and production.shape[1] > 1
    ):
        for j in range(production.shape[1]):
            yield f"{spec.name}[{j}]", production[:, j], reference[:, j]
    else:
        yield spec.name, _flat(production), _flat(reference)


def _flat(values: np.ndarray) -> np.ndarray:
    if values.dtype == object and values.size and isinstance(values.reshape(-1)[0], np.ndarray):
        return np.concatenate([v.reshape(-1) for v in values.reshape(-1)])
    return values.reshape(-1)


# --- one column -----------------------------------------------------------------------------------------


def _column_drift(
    label: str,
    spec: TensorSpec,
    production: np.ndarray,
    reference: np.ndarray,
    fitted: Mapping[str, object] | None,
    thresholds: DriftThresholds,
) -> ColumnDrift:
    fitted = fitted or {}
    if spec.dtype == "string" or spec.dtype == "bool":
        return _category_drift(label, production.astype(str), reference.astype(str), fitted, thresholds)
    return _number_drift(label, production.astype(np.float64), reference.astype(np.float64), fitted, thresholds)


def _text_drift(
    bundle: VerifiedBundle,
    spec: TensorSpec,
    production: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    thresholds: DriftThresholds,
) -> list[ColumnDrift]:
    """Text a frozen tokenizer reads, as the model sees it (through preprocess.onnx, fed every raw input):
    its length in tokens and, where the vocabulary has an unknown token, the share of its tokens unknown."""
    manifest = bundle.manifest
    assert manifest.preprocessing is not None and manifest.stages.preprocess is not None
    settings = next(c for c in manifest.preprocessing.columns if c.input == spec.name).steps[0].params
    runner = stage_runner(
        bundle,
        manifest.stages.preprocess,
        manifest.inputs,
        manifest.preprocessing.features,
        recorded_settings(manifest),
    )

    def measured(inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        features = runner.run({name: (v.astype(object) if name == spec.name else v) for name, v in inputs.items()})
        mask = features["attention_mask"].astype(bool)
        lengths = mask.sum(axis=1).astype(np.float64)
        unknown = settings.get("unk_id")
        if unknown is None:
            return lengths, None
        return lengths, ((features["input_ids"] == unknown) & mask).sum(axis=1) / np.maximum(lengths, 1)

    (prod_lengths, prod_unknown), (ref_lengths, ref_unknown) = measured(production), measured(reference)
    columns = [_number_drift(f"{spec.name} (tokens)", prod_lengths, ref_lengths, {}, thresholds)]
    if prod_unknown is not None and ref_unknown is not None:
        unknown = _number_drift(f"{spec.name} (unknown-token share)", prod_unknown, ref_unknown, {}, thresholds)
        rise = float(prod_unknown.mean() - ref_unknown.mean())
        if rise > thresholds.max_unseen_share:
            unknown.findings.append(
                f"{_percent(float(prod_unknown.mean()))} of the tokens of {spec.name!r} are unknown "
                f"to the vocabulary, against {_percent(float(ref_unknown.mean()))} in the reference set"
            )
        columns.append(unknown)
    return columns


def _share(count: int | float, total: int) -> float:
    return float(count) / total if total else 0.0


def _percent(share: float) -> str:
    return f"{share:.0%}" if share >= 0.01 else f"{share:.1%}"


def _number_drift(
    label: str, production: np.ndarray, reference: np.ndarray, fitted: Mapping[str, object], thresholds: DriftThresholds
) -> ColumnDrift:
    nan, ref_nan = np.isnan(production), np.isnan(reference)
    prod, ref = production[~nan], reference[~ref_nan]
    findings: list[str] = []
    result: dict[str, Any] = {}  # ColumnDrift's optional fields, those this column has
    nan_share, ref_nan_share = _share(nan.sum(), production.size), _share(ref_nan.sum(), reference.size)
    if nan_share - ref_nan_share > thresholds.max_nan_increase:
        findings.append(
            f"{_percent(nan_share)} of {label!r} is missing (NaN), against {_percent(ref_nan_share)} "
            "in the reference set"
        )
    if ref.size:
        low, high = float(ref.min()), float(ref.max())
        outside = _share(((prod < low) | (prod > high)).sum(), production.size)
        result.update(reference_range=[low, high], outside_reference_range=outside)
        if outside > thresholds.max_out_of_range_share:
            findings.append(
                f"{_percent(outside)} of {label!r} lies outside the reference set's range {low:g}..{high:g}"
            )
        edges = np.unique(np.quantile(ref, np.linspace(0, 1, DECILES + 1)[1:-1]))
        ref_bins = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1)
        prod_bins = np.bincount(np.searchsorted(edges, prod, side="right"), minlength=edges.size + 1)
        psi = _psi(ref_bins, prod_bins)
        result["psi"] = psi
        if psi > thresholds.max_psi and prod.size:
            findings.append(f"{label!r} is distributed differently from the reference set (PSI {psi:.2f})")
        bounds = [f"{low:g}"] + [f"{e:.3g}" for e in edges] + [f"{high:g}"]
        result["histogram"] = Histogram(
            labels=[f"{a}..{b}" for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
            reference=_shares(ref_bins),
            production=_shares(prod_bins),
        )
    fitted_range = fitted.get("range")
    if isinstance(fitted_range, list):
        low, high = fitted_range
        outside = _share(((prod < low) | (prod > high)).sum(), production.size)
        result.update(fitted_range=[low, high], outside_fitted_range=outside)
        if outside > thresholds.max_out_of_range_share:
            findings.append(
                f"{_percent(outside)} of {label!r} lies outside the range its preprocessing was fitted "
                f"on ({low:g}..{high:g})"
            )
    return ColumnDrift(
        column=label,
        kind="number",
        samples=int(production.size),
        nan_share=nan_share,
        reference_nan_share=ref_nan_share,
        findings=findings,
        **result,
    )


def _category_drift(
    label: str, production: np.ndarray, reference: np.ndarray, fitted: Mapping[str, object], thresholds: DriftThresholds
) -> ColumnDrift:
    missing = {"", "nan", "None"}
    nan_share = _share(np.isin(production, list(missing)).sum(), production.size)
    ref_nan_share = _share(np.isin(reference, list(missing)).sum(), reference.size)
    known = set(reference.tolist())
    counts = Counter(production.tolist())
    unseen = {value: n for value, n in counts.items() if value not in known}
    unseen_share = _share(sum(unseen.values()), production.size)
    findings = []
    if unseen_share > thresholds.max_unseen_share:
        examples = ", ".join(repr(v) for v, _ in Counter(unseen).most_common(3))
        findings.append(
            f"{_percent(unseen_share)} of samples carry categories of {label!r} the reference set never "
            f"ran ({examples})"
        )
    unfitted_share = None
    vocabulary = fitted.get("vocabulary")
    if isinstance(vocabulary, list):
        fitted_set = set(vocabulary)
        unfitted_share = _share(sum(n for v, n in counts.items() if v not in fitted_set), production.size)
        if unfitted_share > thresholds.max_unseen_share and unfitted_share > unseen_share:
            findings.append(
                f"{_percent(unfitted_share)} of {label!r} is outside the vocabulary its preprocessing was fitted on"
            )
    categories = sorted(known)
    ref_counts = Counter(reference.tolist())
    ref_bins = np.array([ref_counts[c] for c in categories] + [0])
    prod_bins = np.array([counts.get(c, 0) for c in categories] + [sum(unseen.values())])
    psi = _psi(ref_bins, prod_bins)
    if psi > thresholds.max_psi and not findings:
        findings.append(f"{label!r} is distributed differently from the reference set (PSI {psi:.2f})")
    return ColumnDrift(
        column=label,
        kind="category",
        samples=int(production.size),
        nan_share=nan_share,
        reference_nan_share=ref_nan_share,
        psi=psi,
        unseen_share=unseen_share,
        unfitted_share=unfitted_share,
        top_unseen=dict(Counter(unseen).most_common(5)),
        histogram=Histogram(
            labels=categories + ["(never in the reference set)"],
            reference=_shares(ref_bins),
            production=_shares(prod_bins),
        ),
        findings=findings,
    )


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [float(c) / total if total else 0.0 for c in counts]


def _psi(reference: np.ndarray, production: np.ndarray) -> float:
    """Population stability index of two binned counts (the usual reading: < 0.1 stable, > 0.25 shifted)."""
    if not reference.sum() or not production.sum():
        return 0.0
    p = np.maximum(reference / reference.sum(), _PSI_FLOOR)
    q = np.maximum(production / production.sum(), _PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def _output_mix(spec: TensorSpec, served: np.ndarray, research: np.ndarray, thresholds: DriftThresholds) -> OutputMix:
    """Predicted classes (argmax over the last axis) served in production against research's on the references."""

    def mix(scores: np.ndarray) -> Counter:
        if scores.dtype == object:
            return Counter(int(np.argmax(s)) for s in scores)
        return Counter(np.argmax(scores.reshape(-1, scores.shape[-1]), axis=1).tolist()) if scores.size else Counter()

    research_mix, served_mix = mix(research), mix(served)
    classes = sorted(set(research_mix) | set(served_mix))
    r_total, s_total = sum(research_mix.values()), sum(served_mix.values())
    research_shares = {str(c): _share(research_mix[c], r_total) for c in classes}
    served_shares = {str(c): _share(served_mix[c], s_total) for c in classes}
    shift = 0.5 * sum(abs(research_shares[str(c)] - served_shares[str(c)]) for c in classes)
    findings = []
    if shift > thresholds.max_class_shift:
        findings.append(
            f"the classes {spec.name!r} predicts in production differ from research's on the reference set "
            f"(total variation {shift:.2f})"
        )
    return OutputMix(
        output=spec.name, research=research_shares, production=served_shares, shift=shift, findings=findings
    )
