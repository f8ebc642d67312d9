"""Tests written to kill mutants that survived the rest of the suite (`make mutation`, docs/mutation.md).

Each pins a rule that decides a verdict or guards the bundle exactly, where the older tests only
showed that *some* answer came out: the drift table cell by cell, the tolerance boundary, the tie
rule's own tolerance, files that are not regular files.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import require

from paritybundle.bundle.manifest import Tolerance
from paritybundle.parity.accumulator import OutputAccumulator, compare_output
from paritybundle.runtime import drift
from paritybundle.runtime import lock as environment


def _lock(**changes):
    """A fixed, synthetic lock (nothing read from this machine), with ``changes`` applied by dotted path."""
    data = {
        "python": {"version": "3.11.7", "implementation": "CPython"},
        "platform": {"system": "Linux", "release": "6.1.0", "machine": "x86_64", "libc": "glibc 2.36"},
        "cpu": {"model": "cpu", "numeric_flags": ["avx2", "fma"]},
        "threads": {},
        "onnxruntime": {"version": "1.32.0", "providers": ["CPUExecutionProvider"]},
        "distributions": {
            "numpy": "2.4.6",
            "onnx": "1.23.2",
            "onnxruntime": "1.32.0",
            "torch": "2.13.0",
            "paritybundle": "0.1.0",
        },
        "serving": {"numpy": "2.4.6", "onnx": "1.23.2", "onnxruntime": "1.32.0"},
        "paritybundle": "0.1.0",
        "torch": None,
    }
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = data
        for key in path:
            node = node[key]
        node[last] = value
    return environment.EnvironmentLock.model_validate(data)


# Each row: what changed between the lock and this environment -> the one drift item it must give.
DRIFT_TABLE = [
    (
        dict(python__implementation="PyPy"),
        ("python implementation", "CPython", "PyPy", "critical", "a different interpreter"),
    ),
    (dict(python__version="3.12.1"), ("python", "3.11.7", "3.12.1", "critical", "another Python minor version")),
    (dict(python__version="3.11.9"), ("python", "3.11.7", "3.11.9", "info", "a Python patch release")),
    (
        dict(platform__machine="aarch64"),
        ("cpu architecture", "x86_64", "aarch64", "critical", "other kernels and rounding"),
    ),
    (dict(platform__system="Darwin"), ("os", "Linux", "Darwin", "notable", "another operating system")),
    (dict(platform__libc="musl 1.2"), ("libc", "glibc 2.36", "musl 1.2", "notable", "math library differences")),
    (dict(platform__release="6.8.0"), ("kernel release", "6.1.0", "6.8.0", "info", "rarely affects numerics")),
    (
        dict(cpu__numeric_flags=["avx2"]),
        ("cpu features", "fma", "-", "notable", "ONNX Runtime and numpy pick other kernels (missing here: fma)"),
    ),
    (
        dict(cpu__numeric_flags=["avx2", "avx512f", "fma"]),
        ("cpu features", "-", "avx512f", "notable", "ONNX Runtime and numpy pick other kernels (new here: avx512f)"),
    ),
    (
        dict(onnxruntime__version="1.31.0"),
        ("onnxruntime", "1.32.0", "1.31.0", "critical", "the runtime that executes the graph"),
    ),
    (
        dict(onnxruntime__providers=["CPUExecutionProvider", "CUDAExecutionProvider"]),
        (
            "available execution providers",
            "CPUExecutionProvider",
            "CPUExecutionProvider, CUDAExecutionProvider",
            "info",
            "only the validated providers matter",
        ),
    ),
    (dict(distributions__numpy="1.26.4"), ("numpy", "2.4.6", "1.26.4", "critical", "another numpy major version")),
    (dict(distributions__numpy="2.3.0"), ("numpy", "2.4.6", "2.3.0", "notable", "a serving dependency")),
    (dict(distributions__onnx="1.22.0"), ("onnx", "1.23.2", "1.22.0", "notable", "a serving dependency")),
    (
        dict(threads={"OMP_NUM_THREADS": "4"}),
        ("thread variables", "(none)", "OMP_NUM_THREADS=4", "info", "thread counts move results by float32 noise only"),
    ),
]


@pytest.mark.parametrize("change, expected", DRIFT_TABLE, ids=[row[1][0] + "-" + row[1][3] for row in DRIFT_TABLE])
def test_each_difference_gives_exactly_its_drift_item(change, expected):
    """The README's drift classes, cell by cell: a PyPy lock accepted under strict was one audit finding."""
    items = drift.diff_environments(_lock(), _lock(**change), ["CPUExecutionProvider"])
    assert [(i.what, i.locked, i.running, i.severity, i.reason) for i in items] == [expected]


def test_identical_environments_have_no_drift():
    assert drift.diff_environments(_lock(), _lock(), ["CPUExecutionProvider"]) == []


def test_a_missing_serving_dependency_and_a_validated_provider_are_named():
    without_onnx = {k: v for k, v in _lock().distributions.items() if k != "onnx"}
    running = _lock(distributions=without_onnx, onnxruntime__providers=[])
    items = {i.what: i for i in drift.diff_environments(_lock(), running, ["CPUExecutionProvider"])}
    assert items["onnx"].reason == "a serving dependency (not installed)" and items["onnx"].running is None
    provider = items["execution provider CPUExecutionProvider"]
    assert (provider.locked, provider.running, provider.severity) == ("available", "missing", "critical")
    assert provider.reason == "the bundle was validated with it"


def test_training_only_packages_are_info_and_listed_eight_at_most():
    locked = _lock(
        distributions={**_lock().distributions, **{f"trainpkg{k}": "1.0" for k in range(10)}, "moved": "1.0"}
    )
    running = _lock(distributions={**_lock().distributions, "moved": "2.0"})
    items = [i for i in drift.diff_environments(locked, running) if i.what == "training-only packages"]
    absent, moved = items
    assert (absent.locked, absent.running, absent.severity) == ("10 installed", "absent", "info")
    assert absent.reason == (
        "not needed to serve: trainpkg0, trainpkg1, trainpkg2, trainpkg3, trainpkg4, trainpkg5, "
        "trainpkg6, trainpkg7 and 2 more"
    )
    assert (moved.locked, moved.running, moved.reason) == (
        "1 at other versions",
        "changed",
        "not needed to serve: moved 1.0->2.0",
    )


def test_torch_absent_on_the_serving_side_is_info():
    torch_info = environment.TorchInfo(version="2.13.0", cuda=None, cudnn=None, device_name=None)
    locked = _lock().model_copy(update={"torch": torch_info})
    running = _lock().model_copy(
        update={"distributions": {k: v for k, v in _lock().distributions.items() if k != "torch"}}
    )
    items = {i.what: i for i in drift.diff_environments(locked, running)}
    assert (items["torch"].locked, items["torch"].running, items["torch"].severity) == ("2.13.0", None, "info")
    assert items["torch"].reason == "absent on the serving side by design"
    assert "torch" not in {i.what for i in drift.diff_environments(locked, _lock())}  # installed here: no item


def test_items_come_most_severe_first_and_strict_refuses_only_critical():
    running = _lock(platform__release="6.8.0", platform__libc="musl", onnxruntime__version="1.31.0")
    items = drift.diff_environments(_lock(), running)
    assert [i.severity for i in items] == ["critical", "notable", "info"]
    from paritybundle.errors import EnvironmentRefused

    with pytest.raises(EnvironmentRefused, match=r"onnxruntime 1\.32\.0 -> 1\.31\.0 \(the runtime that executes"):
        drift.apply_policy(items, "strict")
    report = drift.apply_policy(items[1:], "strict")
    assert not report.refused and (report.count("critical"), report.count("notable"), report.count("info")) == (0, 1, 1)
    assert drift.apply_policy(items, "warn").count("critical") == 1


def test_several_cpu_features_threads_and_providers_are_each_listed():
    running = _lock(
        cpu__numeric_flags=["avx512f", "sse4"],
        threads={"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "2"},
        onnxruntime__providers=["CUDAExecutionProvider", "TensorrtExecutionProvider"],
    )
    locked = _lock(onnxruntime__providers=["CPUExecutionProvider", "CoreMLExecutionProvider"])
    items = {i.what: i for i in drift.diff_environments(locked, running)}
    features = items["cpu features"]
    assert (features.locked, features.running) == ("avx2 fma", "avx512f sse4")
    assert features.reason == (
        "ONNX Runtime and numpy pick other kernels (missing here: avx2 fma, new here: avx512f sse4)"
    )
    assert items["thread variables"].running == "MKL_NUM_THREADS=2 OMP_NUM_THREADS=4"
    providers = items["available execution providers"]
    assert (providers.locked, providers.running) == (
        "CPUExecutionProvider, CoreMLExecutionProvider",
        "CUDAExecutionProvider, TensorrtExecutionProvider",
    )


def test_numpy_absent_is_a_major_change_and_dependencies_after_onnxruntime_are_still_compared():
    locked = _lock(
        serving={"numpy": "2.4.6", "onnxruntime": "1.32.0", "protobuf": "5.0"},
        distributions={**_lock().distributions, "protobuf": "5.0"},
    )
    # The onnxruntime distribution differs too: it is reported from the runtime itself, not as a package.
    running = _lock(
        distributions={**{k: v for k, v in _lock().distributions.items() if k != "numpy"}, "onnxruntime": "1.31.0"}
    )
    items = {i.what: i for i in drift.diff_environments(locked, running)}
    assert (items["numpy"].running, items["numpy"].severity) == (None, "critical")
    assert items["protobuf"].reason == "a serving dependency (not installed)"
    assert "onnxruntime" not in items


def test_exactly_eight_training_only_packages_are_listed_without_a_count_and_moved_ones_eight_at_most():
    extra = {f"trainpkg{k}": "1.0" for k in range(9)}
    locked = _lock(distributions={**_lock().distributions, **{f"gone{k}": "1.0" for k in range(8)}, **extra})
    running = _lock(distributions={**_lock().distributions, **{name: "2.0" for name in extra}})
    absent, moved = [i for i in drift.diff_environments(locked, running) if i.what == "training-only packages"]
    assert absent.reason == "not needed to serve: " + ", ".join(f"gone{k}" for k in range(8))
    nine = _lock(distributions={**_lock().distributions, **{f"gone{k}": "1.0" for k in range(9)}})
    (absent,) = [i for i in drift.diff_environments(nine, _lock()) if i.what == "training-only packages"]
    assert absent.reason == "not needed to serve: " + ", ".join(f"gone{k}" for k in range(8)) + " and 1 more"
    assert moved.locked == "9 at other versions"
    assert moved.reason == "not needed to serve: " + ", ".join(f"trainpkg{k} 1.0->2.0" for k in range(8))


def test_no_torch_item_when_the_bundle_recorded_no_torch():
    running = _lock(distributions={k: v for k, v in _lock().distributions.items() if k != "torch"})
    assert "torch" not in {i.what for i in drift.diff_environments(_lock(), running)}


def test_notable_items_come_before_info_ones_found_earlier():
    running = _lock(platform__release="6.8.0", cpu__numeric_flags=["avx2"])  # kernel (info) is found first
    assert [i.what for i in drift.diff_environments(_lock(), running)] == ["cpu features", "kernel release"]


def test_policy_messages_list_every_policy_and_every_critical_difference():
    from paritybundle.errors import EnvironmentRefused, UsageError

    with pytest.raises(UsageError) as raised:
        drift.check_policy("lenient")
    assert str(raised.value) == f"environment policy 'lenient' is not one of {', '.join(drift.POLICIES)}."
    items = drift.diff_environments(_lock(), _lock(python__implementation="PyPy", onnxruntime__version="1.31.0"))
    with pytest.raises(EnvironmentRefused) as refused:
        drift.apply_policy(items, "strict")
    assert str(refused.value) == (
        "this environment differs critically from the bundle's lock: python implementation CPython -> PyPy "
        "(a different interpreter); onnxruntime 1.32.0 -> 1.31.0 (the runtime that executes the graph). Install "
        "the bundle's requirements-serve.txt (or run `bundle rehearse`), or pass --env-policy warn to check anyway."
    )


# --- the tolerance boundary and the tie rule ---------------------------------------------------------


def test_an_error_exactly_at_the_bound_passes_and_one_mismatch_is_one_violation():
    """`>` not `>=`: an error equal to atol + rtol*|research| is inside; with atol = rtol = 0 one mismatch
    of four is one violation, not four."""
    research = np.array([[1.0, 2.0, 4.0, 8.0]])
    at_bound = research + np.array([[0.5, 0.0, 0.0, 0.0]])  # atol 0.5: exactly at the bound
    assert compare_output("y", at_bound, research, Tolerance(atol=0.5, rtol=0.0)).passed
    one_off = research.copy()
    one_off[0, 2] = 4.5
    result = compare_output("y", one_off, research, Tolerance(atol=0.0, rtol=0.0))
    assert not result.passed and result.stats.violations == 1 and result.stats.elements == 4
    assert result.stats.worst_index == [0, 2] and result.stats.max_abs == 0.5


def test_relative_tolerance_scales_with_the_research_magnitude():
    research = np.array([[100.0, 0.001]])
    served = research * (1 + 9e-4)  # inside rtol 1e-3 everywhere
    assert compare_output("y", served, research, Tolerance(atol=0.0, rtol=1e-3)).passed
    assert not compare_output("y", research * (1 + 2e-3), research, Tolerance(atol=0.0, rtol=1e-3)).passed


def test_a_loose_value_override_does_not_loosen_the_tie_rule():
    """The tie tolerance is the bundle's own (judge_for passes policy.for_output), not the override: with
    a loose override a real argmax flip must stay a disagreement."""
    from paritybundle.bundle.manifest import TensorSpec, TolerancePolicy
    from paritybundle.parity.judge import judge_for

    research = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    served = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)  # sample 0 flips, far from a tie
    spec = TensorSpec(name="y", dtype="float32", shape=["batch", 2], kind="scores")
    policy = TolerancePolicy(
        reference_device="cpu",
        reference_precision="fp32",
        default=Tolerance(atol=1e-4, rtol=1e-3),
        min_decision_agreement=1.0,
        baseline_factor=100.0,
    )
    judge = judge_for(spec, policy, research.size, overrides={"y": Tolerance(atol=10.0, rtol=0.0)})
    judge.add(served, research)
    result = judge.finish()
    assert result.stats.violations == 0  # the loose override covers the values...
    assert result.decision.ties == 0 and result.decision.agreeing == 1 and not result.passed  # ...not the decision


def test_the_accumulator_streams_to_the_same_verdict_as_one_pass():
    rng = np.random.default_rng(0)
    research = rng.normal(size=(50, 7))
    served = research + rng.normal(scale=1e-3, size=research.shape)
    whole = compare_output("y", served, research, Tolerance(atol=1e-3, rtol=0.0), scores=True)
    streamed = OutputAccumulator("y", Tolerance(atol=1e-3, rtol=0.0), research.size, scores=True)
    for start in range(0, 50, 7):
        streamed.add(served[start : start + 7], research[start : start + 7], start)
    result = streamed.finish()
    streamed_stats, whole_stats = result.stats.model_dump(), whole.stats.model_dump()
    for mean in ("mean_abs", "mean_rel"):  # summed in another order: equal to the last bits only
        assert streamed_stats.pop(mean) == pytest.approx(whole_stats.pop(mean), rel=1e-12)
    assert streamed_stats == whole_stats and result.decision == whole.decision
    assert result.failing_samples == whole.failing_samples


# --- files that are not regular files ----------------------------------------------------------------


def test_a_fifo_in_place_of_a_listed_file_is_refused_not_read(bundle_copy):
    """Without the is_file() check `verify` would block forever reading a FIFO."""
    import threading

    import paritybundle
    from paritybundle.errors import BundleInvalid

    target = bundle_copy / "requirements-serve.txt"
    target.unlink()
    os.mkfifo(target)
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(_verify(paritybundle, bundle_copy)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # unblock the reader so the test process can end
        with open(target, "wb"):
            pass
        pytest.fail("verify blocked reading a FIFO")
    (error,) = outcome
    assert isinstance(error, BundleInvalid) and "requirements-serve.txt" in str(error)
    assert "not a regular file" in str(error)


def _verify(paritybundle, bundle):
    try:
        paritybundle.verify(bundle)
    except Exception as exc:  # the assertion above names what was expected
        return exc
    return None


# --- the tolerance policy, rule by rule ----------------------------------------------------------------

from paritybundle.parity import tolerance as tol  # noqa: E402


@pytest.mark.parametrize(
    "device, precision, expected",
    [
        ("cpu", "fp32", (1e-4, 1e-3)),
        ("cuda", "fp32", (3e-4, 1e-3)),
        ("cuda", "tf32", (1e-3, 2e-3)),
        ("cuda", "bf16", (1e-2, 1e-2)),
        ("cuda", "fp16", (1e-2, 1e-2)),
        ("rocm", "fp32", (3e-4, 1e-3)),  # any accelerator counts as cuda
        ("cpu", "bf16", (1e-2, 1e-2)),
        ("cpu", "tf32", (1e-3, 2e-3)),  # reduced precision on a CPU: as noisy
    ],
)
def test_each_reference_setting_gets_its_preset(device, precision, expected):
    preset = tol.default_tolerance(device, precision)
    assert (preset.atol, preset.rtol, preset.equal_nan) == (*expected, True)


def test_an_unknown_precision_is_a_usage_error_listing_the_known_ones():
    from paritybundle.errors import UsageError

    with pytest.raises(
        UsageError, match=r"unknown reference precision 'int4'; use one of fp32, tf32, bf16, fp16, int8\."
    ):
        tol.default_tolerance("cpu", "int4")


@pytest.mark.parametrize(
    "precision, agreement", [("fp32", 1.0), ("tf32", 1.0), ("bf16", 0.99), ("fp16", 0.99), ("int8", 0.99)]
)
def test_the_default_policy_for_a_precision(precision, agreement):
    policy = tol.default_policy("cuda", precision, per_output={"y": Tolerance(atol=1, rtol=1)})
    assert (policy.reference_device, policy.reference_precision) == ("cuda", precision)
    assert policy.default == tol.default_tolerance("cuda", precision)
    assert policy.min_decision_agreement == agreement and policy.max_tie_share == 0.01
    assert policy.baseline_factor == 100.0 and policy.per_output == {"y": Tolerance(atol=1, rtol=1)}
    assert tol.default_policy().reference_device == "cpu" and tol.default_policy().per_output == {}
    assert tol.default_policy(min_decision_agreement=0.5).min_decision_agreement == 0.5


def test_output_scale_is_the_robust_spread_and_the_largest_finite_magnitude():
    values = np.concatenate([np.linspace(-1.0, 1.0, 101), [np.inf, np.nan, -50.0]])
    spread, max_abs = tol.output_scale(values)
    low, high = np.percentile(np.concatenate([np.linspace(-1.0, 1.0, 101), [-50.0]]), [1, 99])
    assert spread == pytest.approx(high - low) and max_abs == 50.0
    assert tol.output_scale(np.array([np.nan, np.inf])) == (0.0, 0.0)
    assert tol.output_scale(np.full((3, 4), 7.0)) == (0.0, 7.0)


PRESET = Tolerance(atol=1e-4, rtol=1e-3)


def test_scaled_tolerance_takes_a_share_of_the_spread():
    tolerance, rule = tol.scaled_tolerance(PRESET, spread=0.02, max_abs=0.01, export_error=0.0)
    assert rule == "spread" and tolerance.atol == pytest.approx(2e-5) and tolerance.rtol == 1e-3


def test_scaled_tolerance_never_goes_below_the_noise_floor():
    tolerance, rule = tol.scaled_tolerance(PRESET, spread=1e-3, max_abs=1e-4, export_error=1e-6)
    assert rule == "noise" and tolerance.atol == pytest.approx(1e-5)  # 10 x the export error, over 1e-6 share
    ulps, rule = tol.scaled_tolerance(PRESET, spread=1e-6, max_abs=0.1, export_error=0.0)
    assert rule == "noise" and ulps.atol == pytest.approx(64 * float(np.finfo(np.float32).eps) * 0.1)
    infinite, rule = tol.scaled_tolerance(PRESET, spread=1e-3, max_abs=1e-4, export_error=float("inf"))
    assert rule == "spread" and infinite.atol == pytest.approx(1e-6)  # an infinite error is no floor


def test_scaled_tolerance_keeps_the_preset_when_the_share_or_the_floor_reaches_it():
    assert tol.scaled_tolerance(PRESET, spread=0.1, max_abs=1.0, export_error=0.0) == (
        PRESET,
        "preset",
    )  # share == atol
    assert tol.scaled_tolerance(PRESET, spread=1e-3, max_abs=1e-3, export_error=1e-5) == (
        PRESET,
        "preset",
    )  # floor == atol
    equal_nan = Tolerance(atol=1e-4, rtol=1e-3, equal_nan=False)
    scaled, _ = tol.scaled_tolerance(equal_nan, spread=0.02, max_abs=0.01, export_error=0.0)
    assert scaled.equal_nan is False


def test_scale_policy_scales_float_outputs_keeps_caller_ones_and_skips_exact_ones():
    policy = tol.default_policy()
    research = {
        "tiny": np.linspace(0, 0.02, 200),
        "big": np.linspace(-30, 30, 200),
        "set": np.linspace(0, 0.02, 200),
        "ids": np.arange(5),
        "text": np.array(["a", "b"]),
    }
    scaled = tol.scale_policy(policy, research, {"tiny": 0.0}, set_by_caller={"set"})
    assert set(scaled.scales) == {"tiny", "big", "set"}  # integers and strings are compared exactly: no scale
    assert scaled.scales["tiny"].rule == "spread" and scaled.per_output["tiny"].atol == pytest.approx(
        0.001 * scaled.scales["tiny"].spread
    )
    assert scaled.scales["big"].rule == "preset" and "big" not in scaled.per_output
    assert scaled.scales["set"].rule == "caller" and "set" not in scaled.per_output
    assert scaled.scales["set"].spread == scaled.scales["tiny"].spread and scaled.scales["big"].max_abs == 30.0
    assert policy.per_output == {} and policy.scales == {}  # the policy passed in is not changed


def test_tolerance_exceeds_outputs_names_outputs_whose_atol_reaches_their_spread():
    policy = tol.scale_policy(
        tol.default_policy(),
        {"flat": np.full(10, 1e-9) + np.linspace(0, 1e-9, 10), "wide": np.linspace(0, 10, 10), "const": np.ones(10)},
        {},
        {"flat"},
    )
    assert tol.tolerance_exceeds_outputs(policy) == ["flat"]  # kept the preset 1e-4 over a spread of 1e-9
    tight = Tolerance(atol=1e-12, rtol=0.0)
    assert tol.tolerance_exceeds_outputs(policy, {"flat": tight}) == []
    assert tol.tolerance_exceeds_outputs(policy, {"wide": Tolerance(atol=10.0, rtol=0)}) == ["flat", "wide"]


# --- input validation: every rule, and its sentence ----------------------------------------------------

from paritybundle.bundle.manifest import TensorSpec  # noqa: E402
from paritybundle.errors import InputValidationError  # noqa: E402
from paritybundle.runtime import validation  # noqa: E402

X = TensorSpec(name="x", dtype="float32", shape=["batch", 3])
IDS = TensorSpec(name="ids", dtype="int64", shape=["batch", "seq"])
MASK = TensorSpec(name="mask", dtype="int64", shape=["batch", "seq"])
TEXT = TensorSpec(name="text", dtype="string", shape=["batch"])


@pytest.mark.parametrize(
    "specs, inputs, message",
    [
        ([X, TEXT], np.zeros((1, 3)), "this model takes 2 inputs (x, text); pass a mapping of name to array."),
        ([X], {}, "input 'x' is missing; this model takes x."),
        ([X], {"x": np.zeros((1, 3)), "y": 1}, "input 'y' is not an input of this model; it takes x."),
        ([X], {"x": np.zeros((1, 3), np.int64)}, None),  # same kind cast: fine
        ([X], {"x": np.array([["a", "b", "c"]])}, "input 'x' must be float32, got <U1; convert it before sending."),
        (
            [X],
            {"x": np.zeros((1, 3), np.complex64)},
            "input 'x' must be float32, got complex64; convert it before sending.",
        ),
        (
            [X],
            {"x": np.zeros((2, 4), np.float32)},
            "input 'x' must have shape [batch, 3], got [2, 4] (dimension 1 is 4, expected 3).",
        ),
        ([X], {"x": np.zeros((3,), np.float32)}, "input 'x' must have 2 dimensions [batch, 3], got shape [3]."),
        (
            [X],
            {"x": np.array([[1.0, np.nan, 0.0]], np.float32)},
            "input 'x' contains NaN or infinity, which this model does not accept.",
        ),
        (
            [IDS, MASK],
            {"ids": np.zeros((2, 5), np.int64), "mask": np.zeros((2, 6), np.int64)},
            "input 'mask' has 6 along 'seq', but another input has 5; all inputs must agree on it.",
        ),
        ([TEXT], {"text": np.array([1, 2])}, "input 'text' must hold strings, got int64."),
        (
            [TEXT],
            {"text": np.array(["ok", "\ud800"], dtype=object)},
            "input 'text' holds a string that is not valid Unicode ('\\ud800': a lone surrogate); send text that encodes as UTF-8.",
        ),
    ],
)
def test_each_input_rule_says_exactly_what_is_wrong(specs, inputs, message):
    if message is None:
        arrays = validation.validate_inputs(specs, inputs)
        assert arrays["x"].dtype == np.float32 and arrays["x"].flags.c_contiguous
        return
    with pytest.raises(InputValidationError) as caught:
        validation.validate_inputs(specs, inputs)
    assert str(caught.value) == message


def test_a_single_array_is_the_single_input_and_names_the_model_in_messages():
    out = validation.validate_inputs([X], np.ones((2, 3), np.float64))
    assert list(out) == ["x"] and out["x"].dtype == np.float32
    with pytest.raises(InputValidationError, match="^input 'y' is not an input of digits; it takes x.$"):
        validation.validate_inputs([X], {"x": np.ones((1, 3)), "y": 0}, model="digits")


def test_nonfinite_values_pass_where_allowed_or_unchecked():
    bad = {"x": np.array([[np.inf, 0, 0]], np.float32)}
    assert validation.validate_inputs([X.model_copy(update={"allow_nonfinite": True})], bad)["x"][0, 0] == np.inf
    assert validation.validate_inputs([X], bad, check_finite=False)["x"][0, 0] == np.inf


def test_index_bounds_are_inclusive_and_named():
    ids = TensorSpec(name="ids", dtype="int64", shape=["batch"])
    assert validation.validate_inputs([ids], {"ids": np.array([0, 9])}, bounds={"ids": (0, 9)})["ids"].tolist() == [
        0,
        9,
    ]
    with pytest.raises(InputValidationError) as caught:
        validation.validate_inputs([ids], {"ids": np.array([0, 10])}, bounds={"ids": (0, 9)})
    assert str(caught.value) == (
        "input 'ids' has values outside 0..9, the rows of the table the model looks them up in (got 0..10)."
    )
    with pytest.raises(InputValidationError, match=r"outside 0\.\.9, .*\(got -1\.\.0\)"):
        validation.validate_inputs([ids], {"ids": np.array([-1, 0])}, bounds={"ids": (0, 9)})


def test_conform_makes_non_contiguous_arrays_contiguous_and_keeps_contiguous_ones():
    wide = np.zeros((3, 6), np.float32)[:, ::2]
    assert not wide.flags.c_contiguous
    assert validation.conform(X, wide).flags.c_contiguous
    exact = np.zeros((2, 3), np.float32)
    assert validation.conform(X, exact) is exact  # no copy when nothing needs changing
    strings = validation.conform(TEXT, np.array(["a", "b"]))
    assert strings.dtype == object and strings.tolist() == ["a", "b"]


def test_from_columns_takes_dataframes_and_one_dimensional_columns():
    pd = require("pandas", reason="pandas is a dev extra: pip install -e '.[dev]'")
    column = TensorSpec(name="size", dtype="float32", shape=["batch", 1])
    colour = TensorSpec(name="colour", dtype="string", shape=["batch", 1])
    frame = pd.DataFrame({"size": [1.0, 2.0], "colour": ["a", "b"]})
    arranged = validation.from_columns([column, colour], frame)
    assert arranged["size"].shape == (2, 1) and arranged["colour"].tolist() == [["a"], ["b"]]
    matrix = validation.from_columns([X], pd.DataFrame(np.arange(6.0).reshape(2, 3), columns=["a", "b", "c"]))
    assert list(matrix) == ["x"] and matrix["x"].shape == (2, 3)
    named = validation.from_columns([X], pd.DataFrame({"x": [1.0, 2.0]}))  # a column named like the input stays one
    assert named["x"].shape == (2,)
    assert validation.from_columns([X], np.zeros((1, 3))).shape == (1, 3)  # not a frame or mapping: as it is
    untouched = validation.from_columns([X], {"x": np.zeros(3), "other": np.zeros(2)})
    assert untouched["x"].shape == (3,) and untouched["other"].shape == (2,)
    assert validation.shape_text(["batch", 3]) == "[batch, 3]"


# --- strict documents ----------------------------------------------------------------------------------

from paritybundle.bundle import strict  # noqa: E402
from paritybundle.errors import BundleInvalid  # noqa: E402


def test_printable_escapes_control_characters_and_keeps_text():
    assert strict.printable("a\x1b[31mb\x07 c\n\td é") == "a\\x1b[31mb\\x07 c\n\td é"
    assert strict.printable("\u202e") == "\\u202e"  # a bidi override, not printable


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            b'{"a": 1, "a": 2}',
            "bundle.json is not a valid manifest (the key 'a' appears twice in one object); re-export the bundle.",
        ),
        (b"\xff", "bundle.json is not a valid manifest: not valid JSON"),
        (
            b"[" * 100000 + b"]" * 100000,
            "bundle.json is not a valid manifest: nested too deeply; re-export the bundle.",
        ),
        (b'{"n": 1' + b"0" * 5000 + b"}", "bundle.json is not a valid manifest (Exceeds the limit"),
    ],
)
def test_strict_json_refuses_what_json_loads_would_let_through(raw, message):
    with pytest.raises(BundleInvalid) as caught:
        strict.load_json_document(raw, "bundle.json", "manifest")
    assert str(caught.value).startswith(message)
    assert strict.load_json_document(b'{"a": {"b": [1, 2]}}', "x", "y") == {"a": {"b": [1, 2]}}


def test_validation_summary_names_where_and_what_for_at_most_five_problems():
    from pydantic import ValidationError

    from paritybundle.bundle.manifest import TensorSpec as Spec

    try:
        Spec.model_validate(
            {"name": "", "dtype": "complex", "shape": [-1, "x" * 200], "kind": "?", "extra": 1, "more": 2}
        )
    except ValidationError as exc:
        summary = strict.validation_summary(exc)
    # Six problems: name, dtype, shape, kind, extra, more; five are shown, the sixth counted.
    assert summary.startswith("name: String should have at least 1 character; dtype: ")
    assert "kind: " in summary and "extra: Extra inputs are not permitted" in summary
    assert "more: " not in summary and summary.endswith(" (and 1 more)")
    try:
        Spec.model_validate([1])
    except ValidationError as exc:
        assert strict.validation_summary(exc).startswith("(top level): ")


# --- decision agreement, exactly -------------------------------------------------------------------------

from paritybundle.parity.decision import decision_agreement  # noqa: E402


def test_decisions_per_sample_count_flips_ties_and_name_the_samples():
    research = np.array([[0.9, 0.1], [0.5, 0.5 - 1e-6], [0.2, 0.8], [0.7, 0.3]])
    served = np.array([[0.1, 0.9], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]])  # sample 0 flips, sample 1 is a near tie
    d = decision_agreement(served, research, Tolerance(atol=1e-4, rtol=0.0), 1.0)
    assert (d.samples, d.agreeing, d.ties, d.agreement) == (4, 3, 1, 0.75)
    assert d.disagreeing_samples == [0] and not d.per_position and not d.passed
    assert decision_agreement(research, research, Tolerance(atol=0, rtol=0), 1.0).passed


def test_a_tie_is_judged_against_the_research_score_with_atol_and_rtol():
    research = np.array([[1.0, 0.9985]])  # margin 1.5e-3
    served = np.array([[0.0, 1.0]])
    rtol_tie = decision_agreement(served, research, Tolerance(atol=0.0, rtol=1e-3), 1.0)  # within 2*(1e-3*1.0)
    assert rtol_tie.ties == 1 and rtol_tie.agreeing == 1
    atol_tie = decision_agreement(served, research, Tolerance(atol=8e-4, rtol=0.0), 1.0)  # within 2*8e-4
    assert atol_tie.ties == 1
    too_tight = decision_agreement(served, research, Tolerance(atol=0.0, rtol=7e-4), 1.0)
    assert too_tight.ties == 0 and too_tight.agreeing == 0 and too_tight.disagreeing_samples == [0]


def test_decisions_per_position_for_rank_above_two():
    research = np.zeros((2, 3, 4))
    research[..., 1] = 1.0
    served = research.copy()
    served[1, 2] = [0, 0, 0, 5.0]  # one position of sample 1 flips
    served[1, 0] = [0, 0, 0, 5.0]  # and another of the same sample
    d = decision_agreement(served, research, Tolerance(atol=0, rtol=0), 1.0)
    assert (d.samples, d.agreeing, d.per_position, d.disagreeing_samples) == (6, 4, True, [1])
    assert d.unit == "positions" and d.agreement == pytest.approx(4 / 6)


def test_empty_and_degenerate_scores_are_one_hundred_percent():
    empty = decision_agreement(np.zeros((0, 3)), np.zeros((0, 3)), Tolerance(atol=0, rtol=0), 1.0)
    assert (empty.samples, empty.agreement, empty.passed) == (0, 1.0, True)
    no_classes = decision_agreement(np.zeros((2, 0)), np.zeros((2, 0)), Tolerance(atol=0, rtol=0), 0.5)
    assert (no_classes.samples, no_classes.min_agreement) == (0, 0.5)


# --- the limits as shipped (other tests lower them to stay fast) ---------------------------------------


def test_the_shipped_limits_are_the_documented_ones():
    """SECURITY.md and the README state these numbers; tests that exercise the limits lower them."""
    from pathlib import Path

    from paritybundle.bundle import archive
    from paritybundle.bundle.layout import MAX_SIGNATURE_BYTES
    from paritybundle.bundle.manifest import MAX_MANIFEST_BYTES
    from paritybundle.check.sources import STREAM_ABOVE_BYTES
    from paritybundle.serving.state import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_INFLIGHT_BYTES

    security = (Path(__file__).resolve().parents[1] / "SECURITY.md").read_text()
    assert archive.DEFAULT_MAX_UNPACKED_BYTES == 64 * 1024**3 and "more than 64 GiB unpacked" in security
    assert archive.DEFAULT_MAX_UNPACK_SECONDS == 600.0 and "more than 600 s" in security
    assert archive.MAX_EXTENDED_HEADER_BYTES == 8 * 1024 and archive.MAX_MEMBERS == 10_000
    assert MAX_MANIFEST_BYTES == 16 * 1024**2 and "16 MiB" in security
    assert MAX_SIGNATURE_BYTES == 1024**2
    assert STREAM_ABOVE_BYTES == 256 * 1024**2
    assert DEFAULT_MAX_BODY_BYTES == 16 * 1024**2 and "| request body (`--max-body-bytes`) | 16 MiB |" in security
    assert DEFAULT_MAX_INFLIGHT_BYTES == 64 * 1024**2 and "(`--max-inflight-bytes`) | 64 MiB |" in security


def test_unpack_limits_come_from_the_environment_when_set(monkeypatch):
    from paritybundle.bundle import archive

    monkeypatch.delenv("PARITYBUNDLE_MAX_UNPACKED_BYTES", raising=False)
    assert archive.max_unpacked_bytes() == archive.DEFAULT_MAX_UNPACKED_BYTES
    monkeypatch.setenv("PARITYBUNDLE_MAX_UNPACKED_BYTES", "1234")
    assert archive.max_unpacked_bytes() == 1234


def test_a_check_far_above_the_export_time_error_passes_with_a_notice(bundle_copy, digits_bundle):
    """Within tolerance (a loose override here), yet over 100x the error export measured (floored at 1e-6):
    the environment differs numerically from the one that validated the bundle; the report says so."""
    import paritybundle
    from bundle_tools import perturb_weights

    perturb_weights(bundle_copy, relative_noise=0.001)  # an error of order 1e-2, far above export's 1e-6
    report = paritybundle.check(bundle_copy, tolerance=Tolerance(atol=1.0, rtol=0.0))
    assert report.passed
    (output,) = report.outputs
    assert output.above_baseline and output.stats.max_abs > 100 * max(output.baseline_max_abs, 1e-6)
    assert any(
        n.startswith(f"output '{output.name}': serving error") and "the export-time error" in n for n in report.notices
    ), report.notices
    untouched = paritybundle.check(digits_bundle, tolerance=Tolerance(atol=1.0, rtol=0.0))
    assert not untouched.outputs[0].above_baseline and not any("export-time error" in n for n in untouched.notices)


# --- the accumulator's statistics, pinned on small cases worked by hand ----------------------------------


def test_string_outputs_match_exactly_and_report_no_numbers():
    result = compare_output(
        "s", np.array([["a", "b"], ["c", "d"]]), np.array([["a", "x"], ["c", "d"]]), Tolerance(atol=0.0, rtol=0.1)
    )
    s = result.stats
    assert not result.passed and (s.elements, s.violations, s.nonfinite_mismatches) == (4, 1, 1)
    assert (s.worst_index, s.worst_serve, s.worst_research) == ([0, 1], None, None)
    assert s.max_abs == np.inf and s.required_atol == np.inf and result.failing_samples == [0]
    assert compare_output("s", np.array([["a"]]), np.array([["a"]]), Tolerance(atol=0, rtol=0)).passed


def test_nonfinite_mismatches_add_up_over_batches_and_name_the_worst():
    acc = OutputAccumulator("y", Tolerance(atol=1e-3, rtol=0.0, equal_nan=True), 6)
    acc.add(np.array([[np.nan, 1.0]]), np.array([[1.0, 1.0]]), 0)
    acc.add(np.array([[np.inf, 1.0], [2.0, 2.0]]), np.array([[1.0, 1.0], [2.0, 2.5]]), 1)
    result = acc.finish()
    s = result.stats
    assert (s.violations, s.nonfinite_mismatches, s.elements) == (3, 2, 6)  # NaN in batch 1, inf in batch 2
    assert s.worst_index == [0, 0] and np.isnan(s.worst_serve) and s.worst_research == 1.0
    assert result.failing_samples == [0, 1, 2] and result.failing_sample_count == 3


def test_relative_statistics_and_the_atol_that_would_have_passed():
    acc = OutputAccumulator("y", Tolerance(atol=0.0, rtol=0.1), 4)
    acc.add(np.array([[0.0, 1.05, 2.0, 3.0]]), np.array([[0.0, 1.0, 2.0, 3.5]]), 0)
    s = acc.finish().stats
    assert s.max_abs == 0.5 and s.mean_abs == pytest.approx(0.1375)
    assert s.max_rel == pytest.approx(0.5 / 3.5) and s.mean_rel == pytest.approx((0.05 + 0.5 / 3.5) / 4)
    assert s.violations == 1 and (s.worst_index, s.worst_serve, s.worst_research) == ([0, 3], 3.0, 3.5)
    assert s.required_atol == pytest.approx(0.5 - 0.35)  # the atol that, with rtol 0.1, covers 0.5 at 3.5
    assert s.max_tolerance_ratio == pytest.approx(0.5 / 0.35)  # 0 error on 0 research: ratio 0, not NaN


def test_a_shape_difference_is_a_problem_naming_the_batch():
    acc = OutputAccumulator("y", Tolerance(atol=0.0, rtol=0.1), 4)
    acc.add(np.zeros((1, 2)), np.zeros((1, 2)), 0)
    acc.add(np.zeros((1, 3)), np.zeros((1, 2)), 7)
    result = acc.finish()
    assert (
        not result.passed
        and result.problem == "shape [1, 3] differs from the research shape [1, 2] (batch from sample 7)"
    )
    first = OutputAccumulator("y", Tolerance(atol=0.0, rtol=0.1), 4)
    first.add(np.zeros((1, 3)), np.zeros((1, 2)), 0)
    assert first.finish().problem == "shape [1, 3] differs from the research shape [1, 2]"


# --- decoding V2 request data: every wire rule, and its sentence -------------------------------------

from paritybundle.serving.decoding import InputDecoder, decode  # noqa: E402
from paritybundle.serving.wire import BadRequest, RequestInput  # noqa: E402

F32 = TensorSpec(name="x", dtype="float32", shape=["batch", 2])
I8 = TensorSpec(name="n", dtype="int8", shape=["batch"])
U64 = TensorSpec(name="u", dtype="uint64", shape=["batch"])
FLAG = TensorSpec(name="flag", dtype="bool", shape=["batch"])
WORDS = TensorSpec(name="w", dtype="string", shape=["batch"])


def _item(spec, shape, data, datatype=None):
    from paritybundle.serving.wire import v2_datatype

    return RequestInput(name=spec.name, shape=shape, datatype=datatype or v2_datatype(spec), data=data)


@pytest.mark.parametrize(
    "spec, shape, data, datatype, message, status",
    [
        (F32, [1, 2], [1, 2], "FP64", "input 'x' has datatype FP64, but the model expects FP32.", 400),
        (F32, [1, -2], [1, 2], None, "input 'x' has a negative dimension in shape [1, -2].", 400),
        (
            F32,
            [9, 2],
            [0.0] * 18,
            None,
            "input 'x' has a batch of 9, over this server's limit of 8; split the request.",
            413,
        ),
        (F32, [1, 2], [1.0, 2.0, 3.0], None, "input 'x' has 3 values, but shape [1, 2] needs 2.", 400),
        (
            F32,
            [1, 2],
            [[1.0], [2.0, 3.0]],
            None,
            "input 'x' has ragged or non-numeric data; send 2 FP32 values in row-major order.",
            400,
        ),
        (F32, [1, 2], ["a", "b"], None, "input 'x' must hold numbers for FP32, got strings.", 400),
        (F32, [1, 2], [True, False], None, "input 'x' must hold numbers, got true/false.", 400),
        (F32, [1, 2], [1e39, 1.0], None, "input 'x' has values too large for FP32.", 400),
        (I8, [2], [1, 200], None, "input 'n' has values outside the range of INT8.", 400),
        (I8, [2], [1, 2.5], None, "input 'n' must hold integers for INT8.", 400),
        (U64, [1], [-1], None, "input 'u' has values outside the range of UINT64.", 400),
        (FLAG, [2], [1, 0], None, "input 'flag' is BOOL and must hold true/false.", 400),
        (WORDS, [2], ["a", 1], None, "input 'w' is BYTES and must hold strings.", 400),
        (F32, [1, 2], None, None, "input 'x' has no data.", 400),
    ],
)
def test_each_wire_rule_is_one_sentence_and_its_status(spec, shape, data, datatype, message, status):
    with pytest.raises(BadRequest) as caught:
        decode(_item(spec, shape, data, datatype), spec, max_batch=8)
    assert (caught.value.message, caught.value.status) == (message, status)


@pytest.mark.parametrize(
    "spec, data, expected",
    [
        (F32, [1, 2], np.array([[1.0, 2.0]], np.float32)),  # JSON integers for floats: exact
        (F32, [0.1, -2.5], np.array([[0.1, -2.5]], np.float32)),
        (I8, [-128, 127], np.array([-128, 127], np.int8)),
        (I8, [3.0, -4.0], np.array([3, -4], np.int8)),  # whole floats for integers
        (U64, [2**64 - 1], np.array([2**64 - 1], np.uint64)),
        (FLAG, [True, False], np.array([True, False])),
        (WORDS, ["é", ""], np.array(["é", ""], dtype=object)),
    ],
)
def test_well_formed_data_arrives_exactly(spec, data, expected):
    shape = list(expected.shape)
    decoded = decode(_item(spec, shape, data), spec, max_batch=8)
    assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
    assert decoded.tolist() == expected.tolist()


def test_the_decoder_checks_names_duplicates_and_the_specs():
    decoder = InputDecoder([F32, I8], model="m", max_batch=8)
    ok = decoder([_item(F32, [1, 2], [1.0, 2.0]), _item(I8, [1], [3])])
    assert list(ok) == ["x", "n"] and ok["n"].dtype == np.int8
    cases = [
        ([_item(F32, [1, 2], [1.0, 2.0])], "input 'n' is missing; m takes x, n."),
        ([_item(F32, [1, 2], [1.0, 2.0]), _item(F32, [1, 2], [1.0, 2.0])], "input 'x' is given twice."),
        (
            [RequestInput(name="z", shape=[1], datatype="FP32", data=[1.0])],
            "input 'z' is not an input of m; it takes x, n.",
        ),
        (
            [_item(F32, [1, 3], [1.0, 2.0, 3.0]), _item(I8, [1], [3])],
            "input 'x' must have shape [batch, 2], got [1, 3] (dimension 1 is 3, expected 2).",
        ),
    ]
    for items, message in cases:
        with pytest.raises(BadRequest) as caught:
            decoder(items)
        assert caught.value.message == message and caught.value.status == 400
    bounded = InputDecoder([I8], model="m", max_batch=8, bounds={"n": (0, 5)})
    with pytest.raises(BadRequest, match=r"^input 'n' has values outside 0\.\.5"):
        bounded([_item(I8, [1], [6])])
    binary = decoder(
        [_item(F32, [1, 2], None, "FP32"), _item(I8, [1], [3])],
        {"x": memoryview(np.array([1.5, 2.5], "<f4").tobytes())},
    )
    assert binary["x"].tolist() == [[1.5, 2.5]]
