"""One error hierarchy, one exit-code table.

Every expected failure is a :class:`ParityBundleError` whose message says what is
wrong and what to do. The CLI catches this base class only and exits with the
subclass's ``exit_code``; anything else is a bug in paritybundle and reaches the
user as exit 70 with its traceback.

::

    ParityBundleError
     ├── ParityFailure         exit 1  outputs differ beyond tolerance
     │    └── ExportParityError        ...already at export time (no bundle written)
     ├── UsageError            exit 2  bad arguments, missing path, wrong spec
     │    ├── SpecError                the export spec cannot be loaded or is malformed
     │    ├── InputValidationError     inputs do not match the bundle's input specs
     │    │    └── ModelRunError       ONNX Runtime could not run the model on these inputs
     │    ├── BundleExistsError        the export target exists and --force was not given
     │    ├── WeakReferencesError      --require-power, and the reference set detects no 1% weight change
     │    ├── ContainerError           no Docker daemon, base image missing or without python3
     │    └── EndpointError            a live endpoint is unreachable, times out, or is not V2
     ├── BundleInvalid         exit 3  tampered, missing or extra file, bad manifest
     ├── EnvironmentRefused    exit 4  refused by the drift policy
     ├── ExportError           exit 5  the model cannot be exported: torch's exporter failed on it
     │                                 (its reason included), or it is not deterministic in eval mode
     └── ImageBuildError       exit 6  the image build itself failed (the in-image check keeps 1/3/4)

Internal errors deliberately do not subclass ParityBundleError, so bugs keep
their traceback (exit 70).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PARITY = 1
EXIT_USAGE = 2
EXIT_BUNDLE_INVALID = 3
EXIT_ENVIRONMENT = 4
EXIT_EXPORT = 5
EXIT_IMAGE_BUILD = 6
EXIT_INTERNAL = 70


class ParityBundleError(Exception):
    """Base of every expected failure; the CLI maps it to ``exit_code``."""

    exit_code: int = EXIT_INTERNAL


class ParityFailure(ParityBundleError):
    """Serving outputs differ from the research outputs beyond tolerance."""

    exit_code = EXIT_PARITY


class ExportParityError(ParityFailure):
    """ONNX Runtime disagrees with torch already in the training environment.

    Raised by export before anything is written: the bundle would never pass.
    """


class UsageError(ParityBundleError):
    """The caller asked for something that cannot be done as asked."""

    exit_code = EXIT_USAGE


class SpecError(UsageError):
    """An export spec (``file.py:name`` or ``module:name``) cannot be used."""


class InputValidationError(UsageError):
    """Inputs do not match the bundle's input specs (name, dtype or shape)."""


class ModelRunError(InputValidationError):
    """ONNX Runtime failed running the model on these inputs (its reason included).

    The inputs passed every spec rule, yet the graph refused them at run time (an index beyond a
    table the graph does not declare, say). A check running the bundle's own references turns
    this into :class:`BundleInvalid`: the bundle cannot run what it ships.
    """


class BundleExistsError(UsageError):
    """The export target exists and overwriting was not asked for."""


class WeakReferencesError(UsageError):
    """Export with ``require_power``: the reference set does not detect even a 1% weight perturbation."""


class EndpointError(UsageError):
    """A live endpoint given with --url cannot be used: unreachable, timed out, not V2, wrong model."""


class ContainerError(UsageError):
    """No Docker daemon, a missing base image, or one without python3: the caller's setup to fix."""


class BundleInvalid(ParityBundleError):
    """The bundle cannot be trusted: tampered, incomplete, extra files or bad manifest."""

    exit_code = EXIT_BUNDLE_INVALID


class EnvironmentRefused(ParityBundleError):
    """The running environment drifted from the lock beyond what the policy allows."""

    exit_code = EXIT_ENVIRONMENT


class ExportError(ParityBundleError):
    """The model cannot be exported: torch's exporter failed on it (its reason included), or its
    eval-mode outputs change between identical calls. Not a typo of the caller's, hence its own code."""

    exit_code = EXIT_EXPORT


class ImageBuildError(ParityBundleError):
    """``docker build`` of the serving image failed (its own error included), not the in-image check."""

    exit_code = EXIT_IMAGE_BUILD


def error_for_exit_code(code: int) -> type[ParityBundleError] | None:
    """The error class that exits with ``code`` (for a child process's exit, e.g. the in-image check)."""
    for cls in (ParityFailure, UsageError, BundleInvalid, EnvironmentRefused, ExportError, ImageBuildError):
        if cls.exit_code == code:
            return cls
    return None
