"""The bundle format: ``bundle.json`` as strict pydantic models, nothing else.

Every model forbids unknown keys and is frozen, so a manifest either parses
into exactly this shape or is rejected. Every parameter that influences a
verdict is recorded here: tolerances, the device and precision that produced
the references, the ONNX Runtime settings the export was validated with, and
the errors measured between torch and ONNX Runtime at export.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import BundleInvalid
from .layout import MANIFEST_NAME, UNLISTED_FILES
from .strict import StrictModel

FORMAT_VERSION = 1
# Bounds on the numbers a manifest gives: each is far beyond any real bundle, and each keeps a
# hostile value from reaching a loop or the runtime (100000 intra-op threads hung the check).
MAX_FILE_BYTES = 2 ** 50
MAX_DIMENSION = 2 ** 40
MAX_SAMPLES = 2 ** 40
MAX_THREADS = 1024
# A manifest is small; anything bigger is not one of ours and is not parsed.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")

# The dtypes a bundle's tensors may declare (numpy names).
TensorDType = Literal[
    "float16", "float32", "float64", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool", "string",
]


class _ManifestModel(StrictModel):
    """A part of ``bundle.json``: strict like every document, and no NaN or infinity in any number."""

    model_config = ConfigDict(allow_inf_nan=False)


def validate_name(value: str) -> str:
    """A bundle name: it becomes part of URLs (V2 model name) and file names."""
    if not isinstance(value, str) or not _NAME_PATTERN.match(value):
        raise ValueError("must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


class FileDigest(_ManifestModel):
    sha256: str
    bytes: int = Field(ge=0, le=MAX_FILE_BYTES)

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _SHA256_PATTERN.match(value):
            raise ValueError("must be 64 lowercase hex characters")
        return value


class TensorSpec(_ManifestModel):
    """One named input or output: dtype and shape, symbolic dims as strings."""

    name: str = Field(min_length=1, max_length=256)
    dtype: TensorDType
    shape: list[int | str]
    # "scores": values over classes, also checked for decision agreement (argmax).
    kind: Literal["values", "scores"] = "values"
    # Inputs only: whether NaN/inf are legitimate values (e.g. missing tabular data).
    allow_nonfinite: bool = False

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int | str]) -> list[int | str]:
        for dim in shape:
            if isinstance(dim, int) and not 0 <= dim <= MAX_DIMENSION:
                raise ValueError(f"fixed dimensions must be between 0 and {MAX_DIMENSION}; use a name for a variable one")
            if isinstance(dim, str) and not 0 < len(dim) <= 128:
                raise ValueError("a symbolic dimension is a name of 1-128 characters")
        return shape


class Tolerance(_ManifestModel):
    """Element-wise rule: ``|serve - research| <= atol + rtol * |research|``."""

    atol: float = Field(ge=0)
    rtol: float = Field(ge=0)
    # NaN matches NaN only when both sides are NaN and this is true.
    equal_nan: bool = True


class OutputScale(_ManifestModel):
    """What an output's research values look like, and which bound set its absolute tolerance.

    ``rule``: ``spread`` (a share of the output's own spread), ``noise`` (the measured
    torch-vs-ONNX Runtime error, or float32 resolution at the output's magnitude, was larger),
    ``preset`` (the preset for the references' device and precision was smaller), or ``caller``
    (the export spec set this output's tolerance).
    """

    spread: float = Field(ge=0)
    max_abs: float = Field(ge=0)
    rule: Literal["spread", "noise", "preset", "caller"]


class TolerancePolicy(_ManifestModel):
    """How close serving must come to research, and why these numbers.

    ``reference_device``/``reference_precision`` record what produced the
    research outputs; the defaults are derived from them (see ``tolerance.py``).
    """

    reference_device: str
    reference_precision: str
    default: Tolerance
    per_output: dict[str, Tolerance] = Field(default_factory=dict)
    # Share of samples whose argmax must agree, for outputs of kind "scores".
    min_decision_agreement: float = Field(ge=0, le=1)
    # A serving error this many times above the export-time error is reported
    # (as a notice, not a failure) even when it is inside tolerance.
    baseline_factor: float = Field(gt=1)
    # Per output: the research values' spread and magnitude the tolerance was derived from.
    scales: dict[str, OutputScale] = Field(default_factory=dict)
    # At most this share of samples may be decided by the near-tie rule (else the output fails:
    # its scores are too flat to tell classes apart). Bundles before this field: no bound.
    max_tie_share: float = Field(default=1.0, ge=0, le=1)

    def for_output(self, name: str) -> Tolerance:
        return self.per_output.get(name, self.default)


class RuntimeSettings(_ManifestModel):
    """The ONNX Runtime settings the export was validated with."""

    onnxruntime_version: str
    providers: list[str]
    graph_optimization_level: Literal["disable", "basic", "extended", "all"]
    intra_op_num_threads: int = Field(ge=0, le=MAX_THREADS)


class OutputError(_ManifestModel):
    """Error measured between two computations of one output."""

    max_abs: float
    mean_abs: float
    max_rel: float


class Stages(_ManifestModel):
    pipeline: str
    model: str
    preprocess: str | None = None
    opset: int
    exporter: str


class ReferenceSet(_ManifestModel):
    inputs: str
    outputs: str
    features: str | None = None
    samples: int = Field(ge=1, le=MAX_SAMPLES)
    # What produced the research outputs: e.g. ("cpu", "fp32") or ("cuda", "tf32").
    device: str
    precision: str


class PreprocessStep(_ManifestModel):
    """One fitted step of the frozen preprocessing, with its statistics (for reading, not running)."""

    kind: str = Field(min_length=1, max_length=64)
    # What the step does with a missing value (NaN): see paritybundle.preprocess.
    nan: Literal["propagates", "replaced", "none"]
    params: dict[str, Any] = Field(default_factory=dict)


class PreprocessColumn(_ManifestModel):
    """The steps one raw input goes through, and where its features land in the output."""

    input: str
    # [start, stop) along the features' last axis; None: the whole output.
    features: list[int] | None = None
    steps: list[PreprocessStep] = Field(default_factory=list)

    @field_validator("features")
    @classmethod
    def _slice(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 2 or not 0 <= value[0] < value[1] <= MAX_DIMENSION):
            raise ValueError(f"must be [start, stop) with 0 <= start < stop <= {MAX_DIMENSION}")
        return value


class Preprocessing(_ManifestModel):
    """What ``preprocess.onnx`` does: raw inputs -> the model's inputs (the features)."""

    source: Literal["paritybundle", "scikit-learn", "torch"]
    description: str = Field(max_length=4096)
    # The preprocessing outputs = model.onnx's inputs, stored in reference/features.npz.
    features: list[TensorSpec] = Field(min_length=1)
    columns: list[PreprocessColumn]


class Power(_ManifestModel):
    """What the reference set detects, measured at export: weight noise of each of ``levels`` (a share
    of each weight tensor's spread), the smallest that failed (None: neither), and why not."""

    levels: list[float]
    detected: float | None
    # False when it could not be measured (weights in external data, no weights): see reasons.
    measured: bool
    # Per level tried, the worst element's share of its tolerance under that noise.
    worst_ratios: dict[str, float] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)

    def sentence(self) -> str:
        if self.detected is not None:
            return f"this reference set detects a {self.detected:.1%} weight perturbation"
        tried = ", ".join(f"{level:.1%}" for level in self.levels)
        return f"this reference set detects none of {tried} weight perturbations: " + "; ".join(self.reasons)


class CategoryCoverage(_ManifestModel):
    """One fitted vocabulary: its size, how many of its categories the reference rows show, and the
    categories probe rows were added for."""

    vocabulary: int = Field(ge=0)
    seen: int = Field(ge=0)
    probed: list[str] = Field(default_factory=list)


class RangeCoverage(_ManifestModel):
    """One numeric column's fitted range against the range of its reference values."""

    fitted: list[float]
    reference: list[float] | None
    share: float = Field(ge=0, le=1)
    probed: bool = False


class Coverage(_ManifestModel):
    """What the reference set covers. ``selected`` rows come from the ``candidates`` the caller
    offered (``all`` of them, or ``covering`` ones: every class, category, NaN and extreme first);
    ``probes`` generated rows follow them in the reference arrays, one reason each."""

    candidates: int = Field(ge=0)
    selected: int = Field(ge=0)
    probes: int = Field(ge=0)
    selection: Literal["all", "covering"]
    # Per score output: the classes the reference set's research outputs predict.
    classes: dict[str, list[int]] = Field(default_factory=dict)
    categories: dict[str, CategoryCoverage] = Field(default_factory=dict)
    # Per input: how many reference rows hold NaN.
    nan_rows: dict[str, int] = Field(default_factory=dict)
    ranges: dict[str, RangeCoverage] = Field(default_factory=dict)
    probe_reasons: list[str] = Field(default_factory=list)


class GitInfo(_ManifestModel):
    commit: str
    dirty: bool


class Provenance(_ManifestModel):
    git: GitInfo | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    data_hashes: dict[str, str] = Field(default_factory=dict)


class Producer(_ManifestModel):
    tool: Literal["paritybundle"] = "paritybundle"
    version: str
    libraries: dict[str, str]


class Manifest(_ManifestModel):
    """``bundle.json``: the only file of a bundle not listed in itself."""

    format_version: Literal[1]
    name: str
    version: str = Field(min_length=1, max_length=128)
    created_at: datetime
    producer: Producer
    provenance: Provenance
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    stages: Stages
    tolerance: TolerancePolicy
    runtime: RuntimeSettings
    reference: ReferenceSet
    export_errors: dict[str, OutputError]
    # Present exactly when there is a preprocess stage (and reference features).
    preprocessing: Preprocessing | None = None
    # Detection power of the reference set, measured at export (bundles before it: None).
    power: Power | None = None
    # What the reference set covers (bundles before it: None).
    coverage: Coverage | None = None
    environment_lock: str
    serve_requirements: str
    files: dict[str, FileDigest]

    @field_validator("name")
    @classmethod
    def _bundle_name(cls, value: str) -> str:
        return validate_name(value)

    @field_validator("files")
    @classmethod
    def _relative_paths(cls, files: dict[str, FileDigest]) -> dict[str, FileDigest]:
        for path in files:
            parts = PurePosixPath(path).parts
            if (not path or path.startswith("/") or "\\" in path or ".." in parts
                    or "." in parts or path != str(PurePosixPath(path))):
                raise ValueError(f"file path {path!r} must be a plain relative path inside the bundle")
            if path in UNLISTED_FILES:
                raise ValueError(f"{path} must not be listed in its own manifest")
        return files

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        referenced = [self.stages.pipeline, self.stages.model, self.reference.inputs,
                      self.reference.outputs, self.environment_lock, self.serve_requirements]
        referenced += [p for p in (self.stages.preprocess, self.reference.features) if p]
        for path in referenced:
            if path not in self.files:
                raise ValueError(f"{path} is referenced but not listed in files")
        staged = (self.stages.preprocess is not None, self.reference.features is not None, self.preprocessing is not None)
        if len(set(staged)) != 1:
            raise ValueError("stages.preprocess, reference.features and preprocessing must be present together")
        output_names = {o.name for o in self.outputs}
        for name in [*self.tolerance.per_output, *self.tolerance.scales]:
            if name not in output_names:
                raise ValueError(f"tolerance for unknown output {name!r}")
        for names, what in ((self.inputs, "input"), (self.outputs, "output")):
            seen = [t.name for t in names]
            if len(seen) != len(set(seen)):
                raise ValueError(f"duplicate {what} names: {seen}")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


def parse_manifest(raw: bytes, *, source: str = MANIFEST_NAME) -> Manifest:
    """Parse and validate manifest bytes.

    Args:
        raw: the content of ``bundle.json``.
        source: where it came from, for the error message.

    Returns:
        The validated :class:`Manifest`.

    Raises:
        BundleInvalid: not JSON, unknown or missing keys, wrong format version.

    Example:
        >>> parse_manifest(Path("b/bundle.json").read_bytes()).name  # doctest: +SKIP
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleInvalid(f"{source} is {len(raw)} bytes, larger than any manifest; the bundle is not valid.")
    data = load_json_document(raw, source, "manifest")
    if isinstance(data, dict) and data.get("format_version") not in (None, FORMAT_VERSION):
        raise BundleInvalid(
            f"{source} has format_version {data.get('format_version')!r:.40}, this paritybundle reads "
            f"format {FORMAT_VERSION}; use the paritybundle version that wrote it or re-export."
        )
    try:
        # Strict: "bytes": "168609" is not a number, 3.0 is not an integer; JSON's strings stay
        # acceptable where the format says so (created_at).
        return Manifest.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise BundleInvalid(f"{source} is not a valid manifest: {validation_summary(exc)}; re-export the bundle.") from None


def load_json_document(raw: bytes, source: str, kind: str) -> Any:
    """JSON as a bundle document must be: UTF-8, no duplicate keys (json.loads keeps the last, so a second
    "files" would silently win), no integer beyond Python's digit limit, no nesting beyond its recursion.

    Raises:
        BundleInvalid: saying which of these it is.
    """
    try:
        return json.loads(raw, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleInvalid(f"{source} is not a valid {kind}: not valid JSON ({exc}); re-export the bundle.") from None
    except ValueError as exc:  # a duplicate key, or an integer past the 4300-digit conversion limit
        raise BundleInvalid(f"{source} is not a valid {kind} ({str(exc)[:200]}); re-export the bundle.") from None
    except RecursionError:
        raise BundleInvalid(f"{source} is not a valid {kind}: nested too deeply; re-export the bundle.") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"the key {key[:80]!r} appears twice in one object")
        seen.add(key)
    return dict(pairs)


def validation_summary(exc: ValidationError) -> str:
    """The first few problems of a pydantic error, ``where: what`` each, for one sentence."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])[:120] or '(top level)'}: {err['msg'][:200]}" for err in exc.errors()[:5])
    more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return problems + more
