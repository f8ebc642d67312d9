"""Environment lock, serving pins, drift classification and the drift policy."""

from __future__ import annotations

import json
import platform

import pytest

import paritybundle
from bundle_tools import rehash, truncate_and_rehash
from paritybundle.cli import main
from paritybundle.errors import BundleInvalid, EnvironmentRefused, UsageError
from paritybundle.runtime import drift
from paritybundle.runtime import lock as environment


def _edit_lock(bundle, change):
    path = bundle / "environment.lock.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    rehash(bundle)


def test_lock_records_what_changes_numerics(digits_bundle):
    lock = environment.parse_lock((digits_bundle / "environment.lock.json").read_bytes(), source="lock")
    assert lock.python.version == platform.python_version()
    assert lock.platform.machine == platform.machine() and lock.platform.libc
    assert lock.onnxruntime.version and "CPUExecutionProvider" in lock.onnxruntime.providers
    assert lock.torch is not None and lock.torch.version.startswith("2.")
    assert {"torch", "onnxruntime", "numpy", "onnx", "pydantic"} <= set(lock.distributions)
    assert set(lock.cpu.numeric_flags) <= set(environment.NUMERIC_CPU_FLAGS)
    assert "torch" not in lock.serving and {"onnxruntime", "numpy", "protobuf"} <= set(lock.serving)


def test_requirements_serve_pins_exactly_the_locked_serving_closure(digits_bundle):
    lock = environment.parse_lock((digits_bundle / "environment.lock.json").read_bytes(), source="lock")
    pins = [
        line
        for line in (digits_bundle / "requirements-serve.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert pins == [f"{name}=={version}" for name, version in lock.serving.items()]
    assert all("==" in pin for pin in pins)


def test_fast_distribution_listing_agrees_with_metadata():
    from importlib import metadata

    slow = {environment.canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    assert environment.installed_distributions() == dict(sorted(slow.items()))


def test_no_drift_in_the_exporting_environment(digits_bundle):
    report = paritybundle.check(digits_bundle)
    assert report.environment.policy == "strict" and report.environment.count("critical") == 0


@pytest.mark.parametrize(
    "change, what",
    [
        (lambda d: d["onnxruntime"].update(version="1.0.0"), "onnxruntime"),
        (lambda d: d["platform"].update(machine="aarch64"), "cpu architecture"),
        (lambda d: d["python"].update(version="3.7.1"), "python"),
    ],
)
def test_strict_policy_refuses_critical_drift_before_inference(bundle_copy, change, what, monkeypatch):
    _edit_lock(bundle_copy, change)
    import onnxruntime

    runs = []
    real_run = onnxruntime.InferenceSession.run
    monkeypatch.setattr(
        onnxruntime.InferenceSession, "run", lambda self, *a, **k: runs.append(a) or real_run(self, *a, **k)
    )
    with pytest.raises(EnvironmentRefused, match=f"differs critically from the bundle's lock: {what}"):
        paritybundle.check(bundle_copy)
    assert runs == []  # refused before any inference ran
    paritybundle.check(bundle_copy, env_policy="warn")
    assert runs  # the same check under warn does run (so the spy sees runs when there are any)


def test_warn_policy_passes_and_reports_the_drift(bundle_copy):
    _edit_lock(
        bundle_copy, lambda d: (d["onnxruntime"].update(version="1.0.0"), d["platform"].update(machine="aarch64"))
    )
    report = paritybundle.check(bundle_copy, env_policy="warn")
    assert report.passed and report.environment.policy == "warn"
    critical = {item.what: item for item in report.environment.items if item.severity == "critical"}
    assert critical["onnxruntime"].locked == "1.0.0" and critical["cpu architecture"].locked == "aarch64"


def test_ignore_policy_still_records_the_drift(bundle_copy):
    _edit_lock(bundle_copy, lambda d: d["onnxruntime"].update(version="1.0.0"))
    report = paritybundle.check(bundle_copy, env_policy="ignore")
    assert report.passed and report.environment.policy == "ignore" and report.environment.count("critical") == 1


def test_drift_is_classified():
    here = environment.capture(with_closure=False)
    locked = here.model_copy(
        update={
            "distributions": {**here.distributions, "numpy": "1.26.4", "pydantic": "0.1", "only-for-training": "1.0"},
            "serving": {"numpy": "1.26.4", "pydantic": "0.1", "onnxruntime": here.onnxruntime.version},
            # One numeric flag changed either way: the lock had one this CPU lacks, or lacks one it has.
            "cpu": here.cpu.model_copy(update={"numeric_flags": sorted(set(here.cpu.numeric_flags) ^ {"amx_bf16"})}),
            "threads": {"OMP_NUM_THREADS": "64"},
        }
    )
    items = {item.what: item.severity for item in drift.diff_environments(locked, here, ["CPUExecutionProvider"])}
    numpy_major_differs = here.distributions["numpy"].split(".")[0] != "1"
    assert items["numpy"] == ("critical" if numpy_major_differs else "notable")
    assert items["pydantic"] == "notable"
    assert items["cpu features"] == "notable"
    assert items["training-only packages"] == "info"
    assert items["thread variables"] == "info"


def test_missing_validated_provider_is_critical():
    here = environment.capture(with_closure=False)
    items = drift.diff_environments(here, here, ["TensorrtExecutionProvider"])
    assert [(i.what, i.severity) for i in items] == [("execution provider TensorrtExecutionProvider", "critical")]


def test_unknown_policy_is_a_usage_error(digits_bundle):
    with pytest.raises(UsageError, match="environment policy 'lax'"):
        paritybundle.check(digits_bundle, env_policy="lax")


def test_unknown_policy_is_refused_before_the_bundle_is_opened(bundle_copy, monkeypatch):
    # A typo costs no hashing and no session, and is reported as what it is even on a broken bundle.
    from paritybundle.bundle import store

    (bundle_copy / "model.onnx").write_bytes(b"tampered")
    monkeypatch.setattr(store, "verify_files", lambda *a: pytest.fail("the bundle was hashed first"))
    with pytest.raises(UsageError, match="environment policy 'lax' is not one of"):
        paritybundle.load(bundle_copy, env_policy="lax")


def test_truncated_lock_is_a_bundle_error(bundle_copy):
    truncate_and_rehash(bundle_copy, "environment.lock.json", 40)
    with pytest.raises(BundleInvalid, match="environment.lock.json is not a valid environment lock"):
        paritybundle.check(bundle_copy)


def test_edited_lock_without_rehash_is_a_bundle_error(bundle_copy):
    path = bundle_copy / "environment.lock.json"
    path.write_text(path.read_text().replace('"lock_version": 1', '"lock_version": 1 '))
    with pytest.raises(BundleInvalid, match="environment.lock.json"):
        paritybundle.check(bundle_copy)


def test_cli_exit_codes_for_drift(bundle_copy, capsys):
    _edit_lock(bundle_copy, lambda d: d["onnxruntime"].update(version="1.0.0"))
    assert main(["check", str(bundle_copy)]) == 4
    assert "onnxruntime 1.0.0 ->" in capsys.readouterr().err
    assert main(["check", str(bundle_copy), "--env-policy", "warn"]) == 0
    out = capsys.readouterr().out
    assert "policy warn" in out and "critical" in out and "onnxruntime" in out
    assert main(["check", str(bundle_copy), "--env-policy", "nope"]) == 2


def test_cli_env_and_env_diff(digits_bundle, capsys):
    assert main(["env", str(digits_bundle)]) == 0
    assert "onnxruntime" in capsys.readouterr().out
    assert main(["env", str(digits_bundle), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["lock_version"] == 1
    assert main(["env", "diff", str(digits_bundle), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["policy"] == "warn"
