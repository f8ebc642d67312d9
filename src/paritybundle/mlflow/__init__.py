"""MLflow, where research already tracks: runs, the registry and a model flavor (extra ``[mlflow]``).

Nothing here imports mlflow until a function is called; the tracking server is the one MLflow's own
environment names (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``).

* :func:`log_bundle`: a bundle's files as a run's artifacts, with its params, metrics and tags
  (``bundle export --mlflow``).
* :func:`log_check`: a check's JSON and HTML reports, per-output metrics and the verdict as a tag
  (``bundle check --mlflow-run RUN_ID``).
* :func:`log_model`: an MLflow Model whose ``python_function`` flavor opens the bundle through the
  same gate as ``bundle serve`` (hashes, drift policy, the reference check), optionally registered.
* :func:`pull`: ``models:/NAME/VERSION`` or ``runs:/ID/PATH`` downloaded and verified
  (``bundle pull``).

A tracking server that cannot be reached is a usage error (exit 2) before anything is logged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..bundle.manifest import Manifest
from ..bundle.store import VerifiedBundle, open_bundle
from ..check.results import CheckReport
from ..errors import UsageError

INSTALL_HINT = "MLflow is the mlflow extra: pip install 'paritybundle[mlflow]'."
# Where log_model keeps the bundle inside the MLflow Model (its data_path).
MODEL_DATA = "bundle"
ENV_POLICY = "PARITYBUNDLE_MLFLOW_ENV_POLICY"


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return mlflow


def _reachable(mlflow: Any) -> None:
    """Fail before logging anything when the tracking server does not answer."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    # One quick request, without MLflow's retries (minutes against a server that is down).
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as answer:
            if answer.status == 200:
                return
    except OSError as exc:
        raise UsageError(
            f"the MLflow tracking server at {uri} does not answer ({getattr(exc, 'reason', exc)}); "
            "start it or set MLFLOW_TRACKING_URI to one that runs."
        ) from None
    raise UsageError(f"the MLflow tracking server at {uri} is not healthy; check it and retry.")


def bundle_params(manifest: Manifest) -> dict[str, str]:
    """What a run records of a bundle: identity, how it was made, and each output's tolerance."""
    params = {
        "paritybundle.name": manifest.name,
        "paritybundle.version": manifest.version,
        "paritybundle.opset": str(manifest.stages.opset),
        "paritybundle.exporter": manifest.stages.exporter,
        "paritybundle.onnxruntime": manifest.runtime.onnxruntime_version,
        "paritybundle.reference_samples": str(manifest.reference.samples),
        "paritybundle.reference_device": manifest.reference.device,
        "paritybundle.reference_precision": manifest.reference.precision,
    }
    for output in manifest.outputs:
        tolerance = manifest.tolerance.for_output(output.name)
        params[f"paritybundle.tolerance.{output.name}"] = f"atol={tolerance.atol:g} rtol={tolerance.rtol:g}"
    return params


def bundle_metrics(manifest: Manifest) -> dict[str, float]:
    """Torch-vs-ONNX Runtime error per output at export, the reference set's size and detection power."""
    metrics = {
        f"paritybundle.export_error.{name}": float(error.max_abs) for name, error in manifest.export_errors.items()
    }
    metrics["paritybundle.reference_samples"] = float(manifest.reference.samples)
    if manifest.power is not None and manifest.power.detected is not None:
        metrics["paritybundle.smallest_perturbation_detected"] = float(manifest.power.detected)
    return metrics


def log_bundle(
    bundle: str | os.PathLike[str],
    artifact_path: str = "bundle",
    *,
    run_id: str | None = None,
    public_key: str | os.PathLike[str] | None = None,
) -> str:
    """Log a verified bundle to the active run (or ``run_id``; a new run when neither): its files as
    artifacts under ``artifact_path``, params, metrics and tags. Returns the run id.

    Raises:
        UsageError: mlflow missing, the tracking server down, or ``run_id`` unknown.
        BundleInvalid: the bundle fails verification (nothing is logged).
    """
    mlflow = _mlflow()
    verified = open_bundle(bundle, public_key)
    _reachable(mlflow)
    with _run(mlflow, run_id) as run:
        client = mlflow.MlflowClient()
        client.log_artifacts(run.info.run_id, str(verified.root), artifact_path)
        for key, param in bundle_params(verified.manifest).items():
            client.log_param(run.info.run_id, key, param)
        for key, metric in bundle_metrics(verified.manifest).items():
            client.log_metric(run.info.run_id, key, metric)
        client.set_tag(run.info.run_id, "paritybundle.manifest_sha256", verified.manifest_sha256())
        client.set_tag(run.info.run_id, "paritybundle.verdict", "passed at export")
        return run.info.run_id


class _run:
    """The run to log to: ``run_id`` (which must exist), the active run, or a new one (ended after)."""

    def __init__(self, mlflow: Any, run_id: str | None) -> None:
        self.mlflow, self.run_id, self.started = mlflow, run_id, False

    def __enter__(self) -> Any:
        mlflow = self.mlflow
        if self.run_id is not None:
            try:
                return mlflow.MlflowClient().get_run(self.run_id)
            except mlflow.exceptions.MlflowException:
                raise UsageError(
                    f"MLflow run {self.run_id!r} does not exist on {mlflow.get_tracking_uri()}; "
                    "pass the id of a run there."
                ) from None
        active = mlflow.active_run()
        if active is not None:
            return active
        self.started = True
        return mlflow.start_run()

    def __exit__(self, kind: Any, exc: Any, trace: Any) -> None:
        if self.started:
            self.mlflow.end_run("FAILED" if kind is not None else "FINISHED")


def log_check(report: CheckReport, run_id: str, artifact_path: str = "paritybundle-checks") -> None:
    """Log a check's JSON and HTML reports, per-output metrics and the verdict to run ``run_id``."""
    mlflow = _mlflow()
    _reachable(mlflow)
    from ..reports.html_page import check_page
    from ..reports.json_report import to_json

    with _run(mlflow, run_id) as run:
        client = mlflow.MlflowClient()
        stamp = report.checked_at.strftime("%Y%m%dT%H%M%SZ")
        with tempfile.TemporaryDirectory(prefix="paritybundle-mlflow-") as folder:
            (Path(folder) / "check.json").write_text(to_json(report))
            (Path(folder) / "check.html").write_text(check_page(report))
            client.log_artifacts(run.info.run_id, folder, f"{artifact_path}/{stamp}")
        for output in report.outputs:
            prefix = f"paritybundle.check.{output.name}"
            if output.stats is not None:
                client.log_metric(run.info.run_id, f"{prefix}.max_abs", float(output.stats.max_abs))
                client.log_metric(run.info.run_id, f"{prefix}.violations", float(output.stats.violations))
            if output.decision is not None:
                client.log_metric(run.info.run_id, f"{prefix}.agreement", float(output.decision.agreement))
        client.set_tag(run.info.run_id, "paritybundle.verdict", "passed" if report.passed else "failed")


def log_model(
    bundle: str | os.PathLike[str],
    artifact_path: str = "model",
    *,
    registered_model_name: str | None = None,
    run_id: str | None = None,
    public_key: str | os.PathLike[str] | None = None,
) -> Any:
    """An MLflow Model of the bundle: ``mlflow.pyfunc.load_model(...)`` opens it through serving's gate.

    Returns MLflow's ``ModelInfo`` (its ``model_uri``; ``registered_model_version`` when registered).
    """
    mlflow = _mlflow()
    verified = open_bundle(bundle, public_key)
    _reachable(mlflow)
    from .signature import signature_of

    with _run(mlflow, run_id):
        info = mlflow.pyfunc.log_model(
            name=artifact_path,
            loader_module="paritybundle.mlflow.loader",
            data_path=str(verified.root),
            signature=signature_of(verified.manifest),
            registered_model_name=registered_model_name,
            pip_requirements=[f"paritybundle[capture]=={_version()}"],
        )
    return info


def _version() -> str:
    from ..version import __version__

    return __version__


# What `bundle pull` downloads from: the registry (models:/NAME/VERSION, models:/NAME@ALIAS,
# models:/NAME/STAGE, models:/MODEL_ID) and a run's artifacts (runs:/RUN_ID/PATH), as MLflow documents
# them. A file:// or other artifact URI would copy whatever it names (`pull file:///etc` copied /etc).
PULL_SCHEMES = ("models:/", "runs:/")


def pull(uri: str, out: str | os.PathLike[str], *, public_key: str | os.PathLike[str] | None = None) -> VerifiedBundle:
    """Download the bundle behind ``models:/NAME/VERSION`` or ``runs:/RUN/PATH`` into ``out`` and verify it
    there; nothing is left at ``out`` (or beside it) when it does not verify, or the download fails.

    Raises:
        UsageError: a URI of another kind, mlflow missing, the server down, an unknown model or run, no
            bundle there, a download that fails, or ``out`` already exists or cannot be made.
        BundleInvalid: the downloaded bundle fails verification (exit 3).
    """
    if not uri.startswith(PULL_SCHEMES) or len(uri) <= len("runs:/"):
        raise UsageError(
            f"{uri!r} is not a registry or run URI; pull from models:/NAME/VERSION, models:/NAME@ALIAS "
            "or runs:/RUN_ID/PATH."
        )
    mlflow = _mlflow()
    target = Path(out)
    if target.exists() or target.is_symlink():
        raise UsageError(f"{target} already exists; pull into a new directory.")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create {target}: {parent} is not a directory that can be made "
            f"({exc.strerror or exc}); choose another -o."
        ) from None
    _reachable(mlflow)
    work = Path(tempfile.mkdtemp(prefix=".paritybundle-pull-", dir=parent))  # beside OUT: the move is a rename
    try:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(work)))
        except (mlflow.exceptions.MlflowException, OSError) as exc:  # requests' errors are OSErrors too
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise UsageError(f"{uri} cannot be downloaded from {mlflow.get_tracking_uri()}: {first}") from None
        root = _bundle_root(local, uri)
        open_bundle(root, public_key)  # verified where it landed, before it is handed over
        os.rename(root, target)
    finally:
        _remove(work)
    return open_bundle(target, public_key)


def _remove(path: Path) -> None:
    """Remove a download's working folder whatever it holds (read-only folders included), never failing."""

    def writable_then_retry(function: Any, name: str, _: Any) -> None:
        try:
            os.chmod(os.path.dirname(name), 0o700)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, 0o700)
            function(name)
        except OSError:
            pass

    shutil.rmtree(path, onerror=writable_then_retry)


# A logged bundle sits a few folders down an artifact tree (MODEL/data/bundle/...); a search deeper than this
# only walks what a hostile store put there (rglob recursed 10,000 nested folders into a RecursionError).
MAX_SEARCH_DEPTH = 6


def _manifests_within(root: Path, depth: int) -> list[Path]:
    """Folders holding a ``bundle.json`` at most ``depth`` levels below ``root``, links not followed;
    an explicit stack, so no depth of nesting reaches Python's recursion limit."""
    found, frontier = [], [(root, 0)]
    while frontier:
        folder, level = frontier.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name == "bundle.json" and entry.is_file(follow_symlinks=False):
                found.append(Path(folder))
            elif level < depth and entry.is_dir(follow_symlinks=False):
                frontier.append((Path(entry.path), level + 1))
    return found


def _bundle_root(local: Path, uri: str) -> Path:
    for candidate in (local, local / MODEL_DATA, local / "data" / MODEL_DATA):
        if (candidate / "bundle.json").is_file():
            return candidate
    found = _manifests_within(local, MAX_SEARCH_DEPTH)
    if len(found) == 1:
        return found[0]
    raise UsageError(f"{uri} holds no paritybundle bundle (no bundle.json); pass the URI of a logged bundle or model.")


__all__ = ["log_bundle", "log_check", "log_model", "pull"]
