"""The parity check: legitimate noise passes, real defects fail and say where."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import paritybundle
from bundle_tools import perturb_weights, rehash, round_weights_to_fp16, truncate_and_rehash
from paritybundle.bundle.manifest import Tolerance
from paritybundle.errors import BundleInvalid, InputValidationError, UsageError
from paritybundle.runtime.session import SessionSettings


def test_check_passes_on_a_fresh_export(digits_bundle):
    report = paritybundle.check(digits_bundle)
    assert report and report.passed
    logits = report.outputs[0]
    assert logits.name == "logits" and logits.decision.agreement == 1.0
    assert logits.stats.max_tolerance_ratio < 0.2, "defaults must leave headroom over real noise"
    assert report.settings.samples == 450


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("level", ["disable", "basic", "extended", "all"])
def test_thread_count_and_optimization_level_do_not_break_parity(digits_bundle, threads, level):
    settings = SessionSettings(graph_optimization_level=level, intra_op_num_threads=threads)
    report = paritybundle.check(digits_bundle, settings=settings)
    assert report, [o.stats for o in report.outputs]
    assert report.settings.graph_optimization_level == level and report.settings.intra_op_num_threads == threads


@pytest.mark.parametrize("batch_size", [1, 7, 64, None])
def test_batch_size_does_not_break_parity(digits_bundle, batch_size):
    assert paritybundle.check(digits_bundle, batch_size=batch_size)


def test_perturbed_weights_fail_and_name_the_output(bundle_copy):
    perturb_weights(bundle_copy, relative_noise=0.001)
    report = paritybundle.check(bundle_copy)
    assert not report and report.failed_outputs == ["logits"]
    assert report.outputs[0].failing_sample_count > 0


def test_weights_rounded_to_fp16_fail(bundle_copy):
    round_weights_to_fp16(bundle_copy)
    assert not paritybundle.check(bundle_copy)


def test_dropout_and_batchnorm_left_in_training_mode_fail(bundle_copy, digits_spec):
    model = digits_spec.model
    was_training = model.training
    model.train()
    try:
        torch.onnx.export(
            model,
            (torch.zeros(4, 64),),
            str(bundle_copy / "pipeline.onnx"),
            dynamo=False,
            input_names=["pixels"],
            output_names=["logits"],
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.TRAINING,
            do_constant_folding=False,
        )
    finally:
        model.train(was_training)
    rehash(bundle_copy)
    report = paritybundle.check(bundle_copy)
    assert not report and report.failed_outputs == ["logits"]


def test_tolerance_override_changes_the_verdict_and_is_recorded_in_the_report(bundle_copy):
    perturb_weights(bundle_copy, relative_noise=0.001)
    assert not paritybundle.check(bundle_copy)  # the bundle's own tolerance catches the noise
    loose = Tolerance(atol=1.0, rtol=0.1)
    report = paritybundle.check(bundle_copy, per_output_tolerance={"logits": loose})
    assert report.passed and report.outputs[0].stats.violations == 0  # the override, and only it, passes it
    assert report.tolerance_overrides == {"logits": loose}
    assert report.outputs[0].tolerance == loose
    everything = paritybundle.check(bundle_copy, tolerance=loose)
    assert everything.passed and everything.tolerance_overrides == {"logits": loose}


def test_override_for_unknown_output_is_a_usage_error(digits_bundle):
    with pytest.raises(UsageError, match="names output 'nope'"):
        paritybundle.check(digits_bundle, per_output_tolerance={"nope": Tolerance(atol=1, rtol=1)})


def test_truncated_onnx_with_rehashed_manifest_is_bundle_invalid(bundle_copy):
    truncate_and_rehash(bundle_copy, "pipeline.onnx", 2000)
    with pytest.raises(BundleInvalid, match="ONNX Runtime cannot load pipeline.onnx"):
        paritybundle.check(bundle_copy)


def test_truncated_npz_with_rehashed_manifest_is_bundle_invalid(bundle_copy):
    truncate_and_rehash(bundle_copy, "reference/outputs.npz", 500)
    with pytest.raises(BundleInvalid, match="reference/outputs.npz is truncated or not a numpy .npz"):
        paritybundle.check(bundle_copy)


def test_pickled_reference_arrays_are_refused(bundle_copy):
    np.savez(bundle_copy / "reference" / "outputs.npz", logits=np.array([{"evil": 1}], dtype=object))
    rehash(bundle_copy)
    with pytest.raises(BundleInvalid, match="pickled objects"):
        paritybundle.check(bundle_copy)


def test_predict_validates_inputs(digits_bundle):
    runtime = paritybundle.load(digits_bundle)
    assert runtime.predict(np.zeros((2, 64), np.float64))["logits"].shape == (2, 10)
    with pytest.raises(InputValidationError, match="input 'pixels' must have shape \\[batch, 64\\]"):
        runtime.predict(np.zeros((2, 63), np.float32))
    with pytest.raises(InputValidationError, match="input 'pixels' must be float32, got <U1"):
        runtime.predict(np.array([["a"] * 64]))
    with pytest.raises(InputValidationError, match="input 'pxls' is not an input"):
        runtime.predict({"pixels": np.zeros((1, 64), np.float32), "pxls": np.zeros(1)})
    with pytest.raises(InputValidationError, match="input 'pixels' is missing"):
        runtime.predict({})


def test_corrupt_npy_header_inside_a_rehashed_npz_is_bundle_invalid(bundle_copy):
    """Found by the hostile-input suite: numpy's header parser raised SyntaxError, an exit-70 crash."""
    path = bundle_copy / "reference" / "inputs.npz"
    raw = bytearray(path.read_bytes())
    at = raw.index(b"'fortran_order': False,") + len(b"'fortran_order': False")
    raw[at] = ord("(")
    path.write_bytes(bytes(raw))
    rehash(bundle_copy)
    with pytest.raises(BundleInvalid, match="reference/inputs.npz"):
        paritybundle.check(bundle_copy)
