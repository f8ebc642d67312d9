"""Messages that point the right way (issue 27, item 7)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from paritybundle.errors import ExportError
from paritybundle.runtime.session import load_advice
from paritybundle.training import ExportSpec, export_spec


def test_a_custom_op_at_export_names_the_cause_and_what_to_install_not_re_export(tmp_path):
    """Was: exit 3, "re-export the bundle", for a graph using an op this onnxruntime does not register."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph([helper.make_node("Negate2", ["x"], ["y"], domain="ai.onnx.contrib")], "g", [x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)]
    )
    model.ir_version = 8
    (tmp_path / "custom.onnx").write_bytes(model.SerializeToString())
    rows = np.ones((4, 2), np.float32)
    spec = ExportSpec(
        model=str(tmp_path / "custom.onnx"), reference_inputs={"x": rows}, research_outputs={"y": -rows}, name="custom"
    )
    with pytest.raises(ExportError) as caught:
        export_spec(spec, tmp_path / "bundle")
    message = str(caught.value)
    assert caught.value.exit_code == 5
    assert "is not a registered function/op" in message and "pip install onnxruntime-extensions" in message
    assert "re-export" not in message and "Nothing was written" in message
    assert not (tmp_path / "bundle").exists()


def test_a_missing_locale_is_named_with_how_to_install_it():
    advice = load_advice(
        "[ONNXRuntimeError] : 1 : FAIL : Failed to construct locale with name:en_US.UTF-8:locale::"
        "facet::_S_create_c_locale name not valid:Please, install necessary language-pack-XX"
    )
    assert advice is not None and "locale-gen en_US.UTF-8" in advice
    assert load_advice("Type Error: Type (tensor(double)) of input parameter (x) is invalid") is None


def test_diff_counts_changed_decisions_per_direction_out_of_its_own_samples(digits_bundle, tmp_path):
    """Was: the two directions' flips summed ("1642 predictions flip" on 1,002 samples)."""
    from bundle_tools import copy_bundle, perturb_weights
    from paritybundle.commands.diff import diff

    changed = copy_bundle(digits_bundle, tmp_path / "b")
    perturb_weights(changed, 0.05)
    report = diff(digits_bundle, changed)
    assert not report.passed
    assert any(r.outputs[0].decision.agreeing < r.outputs[0].decision.samples for r in report.behaviour)
    for run in report.behaviour:
        decision = run.outputs[0].decision
        if decision.agreeing < decision.samples:
            assert (
                f"logits: {decision.samples - decision.agreeing} of {decision.samples} decisions change"
                in report.verdict
            )
    assert "predictions flip" not in report.verdict


def test_the_bias_resolution_stated_is_the_one_the_check_has(digits_bundle):
    """Was: power in weight units only; a x1.001 bias passed at 0.99 of its tolerance, unstated."""
    from paritybundle.bundle.store import read_manifest
    from paritybundle.parity.judge import judge_for
    from paritybundle.reports.strength import bias_resolution, tolerance_lines

    manifest = read_manifest(digits_bundle)
    research = np.load(digits_bundle / "reference" / "outputs.npz")["logits"].astype(np.float64)
    bias = bias_resolution(manifest.tolerance, "logits")
    assert bias is not None and any(f"(a {bias:.3%} bias)" in line for line in tolerance_lines(manifest.tolerance))
    spec = manifest.outputs[0]
    for factor, passes in ((1 + 0.99 * bias, True), (1 + 1.01 * bias, False)):
        judge = judge_for(spec, manifest.tolerance, research.size)
        judge.add((research * factor).astype(np.float32), research.astype(np.float32), 0)
        assert judge.finish().passed is passes, factor


def test_diff_shows_a_scikit_learn_setting_edited_without_a_fitted_value_moving(tmp_path):
    """Was: the static section listed fitted attributes (``mean_``) only, so an edited setting
    (``handle_unknown``) showed nothing there."""
    import torch
    from conftest import require

    pd = require("pandas", reason="scikit-learn fits named columns on a DataFrame (the sklearn extra)")
    require("skl2onnx", reason="the sklearn extra converts scikit-learn preprocessing")
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    import paritybundle
    from paritybundle.commands.diff import diff

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"height": rng.normal(170, 10, 80).astype(np.float32), "city": rng.choice(["paris", "lyon", "nice"], 80)}
    )
    bundles = []
    for unknown in ("ignore", "infrequent_if_exist"):
        transformer = ColumnTransformer(
            [
                ("numbers", StandardScaler(), ["height"]),
                ("city", OneHotEncoder(handle_unknown=unknown, sparse_output=False), ["city"]),
            ]
        ).fit(frame)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
        bundles.append(
            paritybundle.export(
                model, tmp_path / unknown, preprocess=transformer, reference_inputs=frame, name="sk"
            ).path
        )
    report = diff(*bundles)
    changes = [c.summary for c in report.preprocessing.statistics]
    assert any("handle_unknown" in c and "'ignore' -> 'infrequent_if_exist'" in c for c in changes), changes
