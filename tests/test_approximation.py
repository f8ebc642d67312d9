"""Approximation by design (issue 27, item 5): a serving graph that differs from research on purpose (int8
from fp32 research) is bundled honestly, judged by decisions and a declared error budget.

Was: no way to bundle it. The quantized graph as ``model`` failed its own check against fp32 research at
any fp32 tolerance, and the only advice was "look for operators the exporter translates differently".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import paritybundle
from paritybundle import ErrorBudget
from paritybundle.cli import main
from paritybundle.errors import ExportParityError, SpecError

pytestmark = pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript:DeprecationWarning")
quantization = pytest.importorskip("onnxruntime.quantization", reason="onnxruntime ships its quantization tools")

ROWS = np.random.default_rng(0).normal(size=(240, 32)).astype(np.float32)
# Budget the test model meets with room (measured at export: p50 ~0.2, p99 ~1.5, max ~2.5 on logits of
# spread ~40) and one it cannot.
ROOMY = ErrorBudget(p50=1.0, p99=4.0, max=8.0)
TIGHT = ErrorBudget(p50=1e-3, p99=1e-2, max=5e-2)


def _classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    x = torch.from_numpy(ROWS)
    y = (x @ torch.randn(32, 6)).argmax(1)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 6))
    optimiser = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()


MODEL = _classifier()


def quantize(research_graph: Path) -> Path:
    """What users write: quantize the graph export made (dynamic int8 weights and activations)."""
    serving = research_graph.with_name("int8.onnx")
    quantization.quantize_dynamic(str(research_graph), str(serving), weight_type=quantization.QuantType.QInt8)
    return serving


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("approximation") / "int8"
    paritybundle.export(
        MODEL,
        out,
        reference_inputs=ROWS,
        name="int8",
        serving_model=quantize,
        min_decision_agreement=0.95,
        score_error=ROOMY,
    )
    return out


def test_a_quantized_serving_graph_within_its_budget_exports_and_passes_its_own_check(int8_bundle):
    manifest = json.loads((int8_bundle / "bundle.json").read_text())
    approximation = manifest["tolerance"]["approximation"]
    assert approximation["serving_precision"] == "int8" and approximation["min_decision_agreement"] == 0.95
    assert approximation["score_error"] == {"output": {"p50": 1.0, "p99": 4.0, "max": 8.0}}
    measured = approximation["measured"]["output"]
    # What export saw (the worst of batched, every row alone, and the check's sample alone) is within budget,
    # and not nothing: the int8 graph really differs from fp32 research.
    assert 0 < measured["p50"] <= measured["p99"] <= measured["max"] <= 8.0 and measured["agreement"] >= 0.95
    ops = {node.op_type for node in onnx.load(str(int8_bundle / "model.onnx")).graph.node}
    assert (
        "DynamicQuantizeLinear" in ops
        and (int8_bundle / "pipeline.onnx").read_bytes() == (int8_bundle / "model.onnx").read_bytes()
    )

    report = paritybundle.check(int8_bundle)
    assert report.passed, report.outputs
    (output,) = report.outputs
    assert output.budget is not None and output.budget.budget == ROOMY and 0 < output.budget.p50_abs <= 1.0
    assert output.decision is not None and output.decision.min_agreement == 0.95
    (alone,) = [s for s in report.stages if s.stage == "rows alone"]
    assert alone.passed and alone.outputs[0].budget is not None


def test_the_same_quantized_graph_judged_by_the_fp32_tolerance_fails(int8_bundle, tmp_path):
    # The bundle without its approximation record: the element-wise tolerance judges the int8 graph, and fails.
    copy = tmp_path / "plain"
    import shutil

    shutil.copytree(int8_bundle, copy)
    manifest = json.loads((copy / "bundle.json").read_text())
    del manifest["tolerance"]["approximation"]
    (copy / "bundle.json").write_text(json.dumps(manifest))
    report = paritybundle.check(copy)
    assert not report.passed and report.outputs[0].budget is None


def test_no_declared_budget_refuses_and_says_what_was_measured(tmp_path):
    with pytest.raises(
        ExportParityError,
        match=r"the serving graph \(int8\) differs from research by design, so "
        r"declare by how much: score_error=ErrorBudget.*measured on the "
        r"reference rows: 'output': error p50 [0-9.e-]+, p99 .*decisions agree",
    ):
        paritybundle.export(MODEL, tmp_path / "b", reference_inputs=ROWS, name="int8", serving_model=quantize)
    assert not (tmp_path / "b").exists()


def test_a_budget_the_serving_graph_misses_refuses_with_quantization_advice(tmp_path):
    with pytest.raises(ExportParityError) as caught:
        paritybundle.export(
            MODEL, tmp_path / "b", reference_inputs=ROWS, name="int8", serving_model=quantize, score_error=TIGHT
        )
    message = str(caught.value)
    assert "misses the declared approximation budget" in message
    assert "run batched: output 'output' failed: absolute error p50" in message and "> 0.001" in message
    assert "run one request each" in message
    assert "nodes_to_exclude" in message and "translates differently" not in message
    assert not (tmp_path / "b").exists()


def test_decisions_below_the_declared_agreement_refuse_naming_the_flipped_samples(tmp_path):
    huge = ErrorBudget(p50=1e6, p99=1e6, max=1e6)
    with pytest.raises(
        ExportParityError,
        match=r"argmax agrees on [0-9.]+% of samples, below 100% "
        r"\(flipped samples: \[\d+",
    ):
        # Some rows flip to class 0; the error budget alone would let them through.
        paritybundle.export(
            MODEL,
            tmp_path / "b",
            reference_inputs=ROWS,
            name="coarse",
            serving_model=_coarsened,
            score_error=huge,
            min_decision_agreement=1.0,
        )


def _coarsened(research_graph: Path) -> onnx.ModelProto:
    """An 'approximation' that favours class 0 (its bias raised by 8, about the median margin): a ModelProto answer, not a path."""
    model = onnx.load(str(research_graph), load_external_data=True)
    (bias,) = [i for i in model.graph.initializer if list(i.dims) == [6]]
    values = onnx.numpy_helper.to_array(bias).copy()
    values[0] += 8.0
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    return model


def test_serving_graphs_that_do_not_fit_are_refused_in_one_sentence(tmp_path):
    with pytest.raises(SpecError, match=r"serving_model 'missing.onnx' is not an .onnx file"):
        paritybundle.export(
            MODEL, tmp_path / "a", reference_inputs=ROWS, name="x", serving_model="missing.onnx", score_error=ROOMY
        )
    other = tmp_path / "other.onnx"
    torch.onnx.export(
        torch.nn.Linear(32, 6).eval(), (torch.from_numpy(ROWS[:2]),), str(other), input_names=["features"], dynamo=False
    )
    with pytest.raises(
        SpecError, match=r"the serving graph reads inputs \['features'\], the research graph \['input'\]"
    ):
        paritybundle.export(
            MODEL, tmp_path / "b", reference_inputs=ROWS, name="x", serving_model=other, score_error=ROOMY
        )
    with pytest.raises(SpecError, match=r"score_error budgets a serving_model"):
        paritybundle.export(MODEL, tmp_path / "c", reference_inputs=ROWS, name="x", score_error=ROOMY)
    with pytest.raises(SpecError, match=r"score_error names 'logits', but the float outputs are output"):
        paritybundle.export(
            MODEL,
            tmp_path / "d",
            reference_inputs=ROWS,
            name="x",
            serving_model=quantize,
            score_error={"logits": ROOMY},
        )
    with pytest.raises(SpecError, match=r"min_decision_agreement is 1.5; give a share between 0 and 1"):
        paritybundle.export(
            MODEL,
            tmp_path / "e",
            reference_inputs=ROWS,
            name="x",
            serving_model=quantize,
            score_error=ROOMY,
            min_decision_agreement=1.5,
        )
    with pytest.raises(ValueError, match="p50 <= p99 <= max"):
        ErrorBudget(p50=1.0, p99=0.5, max=2.0)
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_the_cli_exports_a_serving_graph_with_its_budget(tmp_path, capsys):
    research = tmp_path / "research.onnx"
    torch.onnx.export(
        MODEL,
        (torch.from_numpy(ROWS[:2]),),
        str(research),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        dynamo=False,
    )
    serving = quantize(research)
    np.save(tmp_path / "rows.npy", ROWS)
    (tmp_path / "spec.py").write_text(
        "import numpy as np, onnxruntime as ort\n"
        "from paritybundle import ExportSpec\n"
        "from pathlib import Path\n"
        "here = Path(__file__).parent\n"
        "rows = np.load(here / 'rows.npy')\n"
        "research = ort.InferenceSession(str(here / 'research.onnx')).run(None, {'input': rows})[0]\n"
        "def spec():\n"
        "    return ExportSpec(model=str(here / 'research.onnx'), reference_inputs=rows, name='cli-int8',\n"
        "                      research_outputs={'output': research})\n"
    )
    assert (
        main(
            [
                "export",
                f"{tmp_path}/spec.py:spec",
                "-o",
                str(tmp_path / "b"),
                "--serving-graph",
                str(serving),
                "--score-error",
                "1,4,8",
                "--min-decision-agreement",
                "0.95",
            ]
        )
        == 0
    )
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal's width
    assert "research vs the serving graph max abs error" in printed
    assert "approximation by design: the serving graph (int8.onnx, int8)" in printed
    assert "output: budget p50 1, p99 4, max 8; measured at export p50" in printed
    assert main(["check", str(tmp_path / "b")]) == 0
    assert "approximation by design: error p50" in " ".join(capsys.readouterr().out.split())
    assert (
        main(
            [
                "export",
                f"{tmp_path}/spec.py:spec",
                "-o",
                str(tmp_path / "c"),
                "--serving-graph",
                str(serving),
                "--score-error",
                "1,4",
            ]
        )
        == 2
    )
    assert "--score-error '1,4' must be three finite numbers P50,P99,MAX" in " ".join(capsys.readouterr().err.split())


def test_an_int8_model_is_an_accepted_reference_precision(tmp_path):
    """Research evaluated a statically quantized (QDQ) graph itself: its outputs are int8 references."""
    import onnxruntime as ort

    research_graph = tmp_path / "fp32.onnx"
    torch.onnx.export(
        MODEL,
        (torch.from_numpy(ROWS[:2]),),
        str(research_graph),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        dynamo=False,
    )

    class Calibration(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": ROWS[k : k + 40]} for k in range(0, len(ROWS), 40)])

        def get_next(self):
            return next(self.batches, None)

    qdq = tmp_path / "qdq.onnx"
    quantization.quantize_static(
        str(research_graph), str(qdq), Calibration(), quant_format=quantization.QuantFormat.QDQ, per_channel=True
    )
    outputs = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"]).run(None, {"input": ROWS})[0]
    result = paritybundle.export(
        str(qdq), tmp_path / "b", reference_inputs=ROWS, name="qdq", research_outputs={"output": outputs}
    )
    policy = result.manifest.tolerance
    assert (policy.reference_precision, policy.default.atol, policy.default.rtol) == ("int8", 0.05, 0.05)
    assert policy.min_decision_agreement == 0.99 and policy.approximation is None
    assert paritybundle.check(result.path).passed
