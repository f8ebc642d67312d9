"""The bundle format: ``bundle.json`` as strict pydantic models, nothing else.

Every model forbids unknown keys and is frozen, so a manifest either parses
into exactly this shape or is rejected. Every parameter that influences a
verdict is recorded here: tolerances, the device and precision that produced
the references, the ONNX Runtime settings the export was validated with, and
the errors measured between torch and ONNX Runtime at export.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, Final, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..errors import BundleInvalid
from .layout import MANIFEST_NAME, UNLISTED_FILES
from .policy import Approximation, ErrorBudget, MeasuredError, OutputScale, Tolerance, TolerancePolicy
from .strength import CategoryCoverage, Coverage, Power, RangeCoverage
from .strict import BundleDocument, load_json_document, validation_summary

__all__ = [
    "Approximation",
    "CategoryCoverage",
    "Coverage",
    "ErrorBudget",
    "MeasuredError",
    "OutputScale",
    "Power",
    "RangeCoverage",
    "Tolerance",
    "TolerancePolicy",
    "load_json_document",
    "validation_summary",
]

FORMAT_VERSION: Final = 1
# Bounds on the numbers a manifest gives: each is far beyond any real bundle, and each keeps a
# hostile value from reaching a loop or the runtime (100000 intra-op threads hung the check).
MAX_FILE_BYTES = 2**50
MAX_DIMENSION = 2**40
MAX_SAMPLES = 2**40
MAX_THREADS = 1024
# A manifest is small; anything bigger is not one of ours and is not parsed.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")

# The dtypes a bundle's tensors may declare (numpy names).
OutputKind = Literal["values", "scores"]
NanBehaviour = Literal["propagates", "replaced", "none"]  # what a preprocessing step does with a NaN
PreprocessSource = Literal["paritybundle", "scikit-learn", "torch", "transformers"]
TensorDType = Literal[
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "string",
]


def validate_name(value: str) -> str:
    """A bundle name: it becomes part of URLs (V2 model name) and file names."""
    if not isinstance(value, str) or not _NAME_PATTERN.match(value):
        raise ValueError("must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


class FileDigest(BundleDocument):
    sha256: str
    bytes: int = Field(ge=0, le=MAX_FILE_BYTES)

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _SHA256_PATTERN.match(value):
            raise ValueError("must be 64 lowercase hex characters")
        return value


class TextRules(BundleDocument):
    """What a frozen tokenizer was not proven to read as research's tokenizer does (measured at export:
    training/preprocessing/text_alphabet.py), so serving refuses it, naming it."""

    # Code-point runs, hex and inclusive ("0-0,d800-dfff,..."): NUL (which its operators stop at) among them.
    refused_chars: str = Field(max_length=1_000_000, pattern=r"^[0-9a-f]+-[0-9a-f]+(,[0-9a-f]+-[0-9a-f]+)*$")
    # Text the tokenizer turns into no tokens at all (a byte-level BPE without special tokens, given ""):
    # nothing for the model to read, and what it answers then is not research's.
    empty_refused: bool = False

    @field_validator("refused_chars")
    @classmethod
    def _runs(cls, value: str) -> str:
        for run in value.split(","):
            first, last = (int(part, 16) for part in run.split("-"))
            if not first <= last <= 0x10FFFF:
                raise ValueError("must be runs first-last of Unicode code points, first <= last <= 10ffff")
        return value


class TensorSpec(BundleDocument):
    """One named input or output: dtype and shape, symbolic dims as strings."""

    written_when_set = ("research_dtype", "max_dims", "text")

    name: str = Field(min_length=1, max_length=256)
    dtype: TensorDType
    shape: list[int | str]
    # "scores": values over classes, also checked for decision agreement (argmax).
    kind: OutputKind = "values"
    # Inputs only: whether NaN/inf are legitimate values (e.g. missing tabular data).
    allow_nonfinite: bool = False
    # The dtype research's arrays had when it was not ``dtype``: they are stored, and compared, in ``dtype``
    # (float64 research of a float32 graph; training/research_dtypes.py has the rule). None: the same.
    research_dtype: TensorDType | None = None
    # Inputs only: the largest size a symbolic dimension may take (a sequence model's position table, found
    # at export: training/max_lengths.py); a longer request is refused. None: no limit found.
    max_dims: dict[str, int] | None = None
    # Inputs only: raw text read by a frozen tokenizer, and what of it serving refuses. None: not such text.
    text: TextRules | None = None

    @field_validator("max_dims")
    @classmethod
    def _max_dims(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for dim, size in (value or {}).items():
            if not 0 < len(dim) <= 128 or not 1 <= size <= MAX_DIMENSION:
                raise ValueError(f"max_dims must name symbolic dimensions with sizes 1..{MAX_DIMENSION}")
        return value

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int | str]) -> list[int | str]:
        for dim in shape:
            if isinstance(dim, int) and not 0 <= dim <= MAX_DIMENSION:
                raise ValueError(
                    f"fixed dimensions must be between 0 and {MAX_DIMENSION}; use a name for a variable one"
                )
            if isinstance(dim, str) and not 0 < len(dim) <= 128:
                raise ValueError("a symbolic dimension is a name of 1-128 characters")
        return shape


class RuntimeSettings(BundleDocument):
    """The ONNX Runtime settings the export was validated with."""

    written_when_set = ("custom_ops",)

    onnxruntime_version: str
    providers: list[str]
    graph_optimization_level: Literal["disable", "basic", "extended", "all"]
    intra_op_num_threads: int = Field(ge=0, le=MAX_THREADS)
    # Custom-operator libraries the graphs need registered (a frozen tokenizer's onnxruntime-extensions);
    # written only when there is one, so other bundles stay what older readers read.
    custom_ops: list[Literal["onnxruntime-extensions"]] = Field(default_factory=list, max_length=1)


class OutputError(BundleDocument):
    """Error measured between two computations of one output."""

    max_abs: float
    mean_abs: float
    max_rel: float


class Stages(BundleDocument):
    pipeline: str
    model: str
    preprocess: str | None = None
    opset: int
    exporter: str


# A reference set may hold this many groups of different shapes (sequence lengths, image sizes).
MAX_GROUPS = 256


class ReferenceGroup(BundleDocument):
    """One group of reference rows sharing their non-batch shape."""

    inputs: str
    outputs: str
    features: str | None = None
    samples: int = Field(ge=1, le=MAX_SAMPLES)
    # The group's non-batch sizes per input (e.g. {"input_ids": [24]}), for reports.
    shapes: dict[str, list[int]] = Field(default_factory=dict)


class ReferenceSet(BundleDocument):
    """The reference rows. ``inputs``/``outputs``/``features`` are the first group's files; with rows of
    several shapes, ``groups`` lists every group (the first naming the same files) and ``samples``
    counts them all."""

    # A reference set of one shape is written as before groups existed.
    written_when_set = ("groups",)

    inputs: str
    outputs: str
    features: str | None = None
    samples: int = Field(ge=1, le=MAX_SAMPLES)
    # What produced the research outputs: e.g. ("cpu", "fp32") or ("cuda", "tf32").
    device: str
    precision: str
    groups: list[ReferenceGroup] = Field(default_factory=list, max_length=MAX_GROUPS)

    @model_validator(mode="after")
    def _groups_agree(self) -> ReferenceSet:
        if not self.groups:
            return self
        first = self.groups[0]
        if (first.inputs, first.outputs, first.features) != (self.inputs, self.outputs, self.features):
            raise ValueError("the first reference group must name the reference set's own files")
        if any((g.features is None) != (self.features is None) for g in self.groups):
            raise ValueError("every reference group has features, or none does")
        if sum(g.samples for g in self.groups) != self.samples:
            raise ValueError("the reference groups' samples must add up to the reference set's samples")
        files = [f for g in self.groups for f in (g.inputs, g.outputs, g.features) if f]
        if len(files) != len(set(files)):
            raise ValueError("reference groups must not share files")
        return self

    def all_groups(self) -> list[ReferenceGroup]:
        """Every group; a set without ``groups`` is one group of the top-level files."""
        return list(self.groups) or [
            ReferenceGroup(inputs=self.inputs, outputs=self.outputs, features=self.features, samples=self.samples)
        ]

    def locate(self, sample: int) -> tuple[int, int]:
        """``(group, index within it)`` of a sample numbered across the whole set."""
        groups = self.all_groups()
        for index, group in enumerate(groups[:-1]):
            if sample < group.samples:
                return index, sample
            sample -= group.samples
        return len(groups) - 1, sample  # the last group holds the rest


class PreprocessStep(BundleDocument):
    """One fitted step of the frozen preprocessing, with its statistics (for reading, not running)."""

    kind: str = Field(min_length=1, max_length=64)
    # What the step does with a missing value (NaN): see paritybundle.preprocess.
    nan: NanBehaviour
    params: dict[str, Any] = Field(default_factory=dict)


class PreprocessColumn(BundleDocument):
    """The steps one raw input goes through, and where its features land in the output."""

    written_when_set = ("outputs",)

    input: str
    # [start, stop) along the features' last axis; None: the whole output.
    features: list[int] | None = None
    steps: list[PreprocessStep] = Field(default_factory=list)
    # The feature arrays it feeds (an input passed through to the model feeds its own); None: those no other
    # column claims. Written only when set.
    outputs: list[str] | None = None

    @field_validator("features")
    @classmethod
    def _slice(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 2 or not 0 <= value[0] < value[1] <= MAX_DIMENSION):
            raise ValueError(f"must be [start, stop) with 0 <= start < stop <= {MAX_DIMENSION}")
        return value


class Preprocessing(BundleDocument):
    """What ``preprocess.onnx`` does: raw inputs -> the model's inputs (the features)."""

    source: PreprocessSource
    description: str = Field(max_length=4096)
    # The preprocessing outputs = model.onnx's inputs, stored in reference/features.npz.
    features: list[TensorSpec] = Field(min_length=1)
    columns: list[PreprocessColumn]


class GitInfo(BundleDocument):
    commit: str
    dirty: bool


class Provenance(BundleDocument):
    git: GitInfo | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    data_hashes: dict[str, str] = Field(default_factory=dict)


class Producer(BundleDocument):
    tool: Literal["paritybundle"] = "paritybundle"
    version: str
    libraries: dict[str, str]


class Manifest(BundleDocument):
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

    def export_error_label(self) -> str:
        """What ``export_errors`` measured: whose outputs against which graph, e.g. "torch vs ONNX Runtime".
        An ``.onnx`` made elsewhere was measured against the research outputs its caller supplied, no torch ran."""
        if self.tolerance.approximation is not None:
            return "research vs the serving graph"
        if self.stages.exporter.startswith("torch.onnx"):
            return "torch vs ONNX Runtime"
        return "the research outputs vs ONNX Runtime"

    @field_validator("name")
    @classmethod
    def _bundle_name(cls, value: str) -> str:
        return validate_name(value)

    @field_validator("files")
    @classmethod
    def _relative_paths(cls, files: dict[str, FileDigest]) -> dict[str, FileDigest]:
        for path in files:
            parts = PurePosixPath(path).parts
            if (
                not path
                or path.startswith("/")
                or "\\" in path
                or ".." in parts
                or "." in parts
                or path != str(PurePosixPath(path))
            ):
                raise ValueError(f"file path {path!r} must be a plain relative path inside the bundle")
            if path in UNLISTED_FILES:
                raise ValueError(f"{path} must not be listed in its own manifest")
        return files

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        referenced = [
            self.stages.pipeline,
            self.stages.model,
            self.reference.inputs,
            self.reference.outputs,
            self.environment_lock,
            self.serve_requirements,
        ]
        referenced += [p for p in (self.stages.preprocess, self.reference.features) if p]
        referenced += [p for g in self.reference.groups for p in (g.inputs, g.outputs, g.features) if p]
        for path in referenced:
            if path not in self.files:
                raise ValueError(f"{path} is referenced but not listed in files")
        staged = (
            self.stages.preprocess is not None,
            self.reference.features is not None,
            self.preprocessing is not None,
        )
        if len(set(staged)) != 1:
            raise ValueError("stages.preprocess, reference.features and preprocessing must be present together")
        output_names = {o.name for o in self.outputs}
        approximated = self.tolerance.approximation
        budgeted = [*approximated.score_error, *approximated.measured] if approximated is not None else []
        for name in [*self.tolerance.per_output, *self.tolerance.scales, *budgeted]:
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
        raise BundleInvalid(
            f"{source} is not a valid manifest: {validation_summary(exc)}; re-export the bundle."
        ) from None
