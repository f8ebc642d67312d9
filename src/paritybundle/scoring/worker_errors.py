"""What stopped a distributed job, from what its engine hands back.

Engines report a worker's exception in their own wrapping: Ray as "the actor died" (a failed gate)
or a ``RayTaskError`` around a ``UserCodeException``, Spark as a ``PythonException`` holding the
worker's traceback as text. The class of a paritybundle error decides the exit code, so it is
recovered: from the workers' own records first, then from the exception chain, then from the
text of the traceback (``paritybundle.errors.NAME: message``, the worker's last such line).
"""

from __future__ import annotations

import re

from .. import errors
from ..errors import ParityBundleError, UsageError, error_for_exit_code
from .gate import Engine, WorkerRecord

_RAISED = re.compile(r"paritybundle\.errors\.(\w+): (.+)")


def job_error(engine: Engine | str, records: list[WorkerRecord], failure: BaseException | None) -> BaseException:
    """What stopped a distributed job: a refused gate (from the workers' records), else the expected
    error a worker raised (found in the engine's wrapping), else the engine's own error (a bug or an
    outage, kept with its traceback)."""
    for record in records:
        if record.verdict == "failed":
            cls = error_for_exit_code(record.exit_code) or UsageError
            return cls(record.message or f"worker {record.worker} on node {record.node} refused to score.")
    found = expected_cause(failure)
    if found is None and failure is not None:
        found = error_from_text(str(failure))
    if found is not None:
        return found
    return failure if failure is not None else RuntimeError(f"the {engine} job failed without an error")


def expected_cause(error: BaseException | None) -> ParityBundleError | None:
    """A :class:`ParityBundleError` in an engine's wrapping of a worker's exception (``cause``, the
    exception chain), as a plain instance with its own message."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)
        if isinstance(cause, ParityBundleError):
            error = cause
        if isinstance(error, ParityBundleError):
            cls = error_for_exit_code(error.exit_code) or UsageError
            message = error.args[0] if error.args else str(error)
            return type(error)(message) if type(error).__module__.startswith("paritybundle") else cls(message)
        error = error.__cause__ or error.__context__ or (cause if isinstance(cause, BaseException) else None)
    return None


def error_from_text(text: str) -> ParityBundleError | None:
    """The paritybundle error a worker raised, from an engine's text of its traceback."""
    found = _RAISED.findall(text)
    if not found:
        return None
    name, message = found[-1]
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, ParityBundleError):
        return cls(message.strip())
    return None
