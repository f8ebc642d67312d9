"""Export: eval mode, fail-closed validation, atomic writes, and clear errors for bad specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import paritybundle
from paritybundle.bundle.manifest import Tolerance
from paritybundle.bundle.store import open_bundle
from paritybundle.errors import BundleExistsError, ExportError, ExportParityError, SpecError


class TinyMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)
        )

    def forward(self, x):
        return self.net(x)


X = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


def test_export_writes_the_full_layout_and_verifies(digits_bundle):
    manifest = open_bundle(digits_bundle).manifest
    assert set(manifest.files) == {
        "pipeline.onnx",
        "model.onnx",
        "reference/inputs.npz",
        "reference/outputs.npz",
        "environment.lock.json",
        "requirements-serve.txt",
    }
    assert manifest.inputs[0].name == "pixels" and manifest.inputs[0].shape == ["batch", 64]
    assert manifest.outputs[0].name == "logits" and manifest.outputs[0].kind == "scores"
    assert 0 < manifest.export_errors["logits"].max_abs < manifest.tolerance.default.atol
    assert manifest.provenance.params["epochs"] == 2 and "test_accuracy" in manifest.provenance.metrics
    assert manifest.provenance.git is not None, "the example lives in a git checkout"
    requirements = (digits_bundle / "requirements-serve.txt").read_text()
    assert "onnxruntime==" in requirements and "numpy==" in requirements and "torch" not in requirements


def test_export_forces_eval_mode_and_restores_the_callers_mode(tmp_path, caplog):
    model = TinyMLP().train()
    result = paritybundle.export(model, tmp_path / "b", reference_inputs=X, name="tiny")
    assert result.was_training and model.training
    assert "was in training mode" in caplog.text
    # Research outputs are the eval-mode outputs (dropout off), so they are deterministic. Computed
    # on the same batch as export (all 20 rows): a GEMM's rounding may depend on the batch size.
    model.eval()
    expected = model(torch.from_numpy(X)).detach().numpy()[:5]
    stored = np.load(tmp_path / "b" / "reference" / "outputs.npz")["output"][:5]
    np.testing.assert_array_equal(stored, expected)


def test_dynamic_batch_dimension_serves_any_batch_size(tmp_path):
    paritybundle.export(TinyMLP(), tmp_path / "b", reference_inputs=X, name="tiny")
    runtime = paritybundle.load(tmp_path / "b")
    for n in (1, 3, 50):
        assert runtime.predict(np.zeros((n, 4), np.float32))["output"].shape == (n, 3)


def test_max_reference_samples_caps_the_reference_set(tmp_path):
    result = paritybundle.export(TinyMLP(), tmp_path / "b", reference_inputs=X, name="tiny", max_reference_samples=7)
    assert result.manifest.reference.samples == 7
    assert np.load(tmp_path / "b" / "reference" / "inputs.npz")["input"].shape == (7, 4)


class WideTanh(torch.nn.Module):
    """Wide enough (and tanh, which ONNX Runtime approximates its own way) that torch and ORT differ
    by float32 noise on any CPU; TinyMLP's few terms can round identically (they do on AMX CPUs)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 512),
            torch.nn.Tanh(),
            torch.nn.Linear(512, 512),
            torch.nn.Tanh(),
            torch.nn.Linear(512, 3),
        )

    def forward(self, x):
        return self.net(x)


def test_export_fails_closed_when_ort_disagrees_and_writes_nothing(tmp_path):
    # A zero tolerance cannot absorb the real float32 noise between torch and ORT.
    with pytest.raises(ExportParityError, match="no bundle was written: output 'output' failed"):
        paritybundle.export(
            WideTanh(),
            tmp_path / "b",
            reference_inputs=X,
            name="tiny",
            tolerance=Tolerance(atol=0, rtol=0),
            exporter="torchscript",
        )
    assert _leftovers(tmp_path) == []


def test_existing_bundle_is_not_overwritten_without_force(tmp_path):
    paritybundle.export(TinyMLP(), tmp_path / "b", reference_inputs=X, name="tiny", version="1")
    with pytest.raises(BundleExistsError, match="already exists"):
        paritybundle.export(TinyMLP(), tmp_path / "b", reference_inputs=X, name="tiny", version="2")
    assert open_bundle(tmp_path / "b").manifest.version == "1"
    paritybundle.export(TinyMLP(), tmp_path / "b", reference_inputs=X, name="tiny", version="2", force=True)
    assert open_bundle(tmp_path / "b").manifest.version == "2"
    assert _leftovers(tmp_path) == ["b"]


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
            return x * 2
        return x


def test_unexportable_model_surfaces_the_exporters_reason(tmp_path):
    with pytest.raises(ExportError, match="could not convert DataDependent: .+"):
        paritybundle.export(DataDependent(), tmp_path / "b", reference_inputs=X, name="dd")
    assert _leftovers(tmp_path) == []


class Noisy(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.dropout(x, 0.5, training=True)


def test_nondeterministic_model_is_refused(tmp_path):
    with pytest.raises(ExportError, match="changes between two identical calls in eval mode"):
        paritybundle.export(Noisy(), tmp_path / "b", reference_inputs=X, name="noisy")


def test_reference_inputs_of_wrong_shape_are_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="the model raised on the reference inputs"):
        paritybundle.export(TinyMLP(), tmp_path / "b", reference_inputs=np.zeros((5, 7), np.float32), name="tiny")


def test_reference_inputs_of_wrong_dtype_are_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="the model raised on the reference inputs"):
        paritybundle.export(TinyMLP(), tmp_path / "b", reference_inputs=X.astype(np.float64), name="tiny")


def test_non_module_model_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="not a torch.nn.Module"):
        paritybundle.export(lambda x: x, tmp_path / "b", reference_inputs=X, name="tiny")


def test_bad_bundle_name_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="bundle name '../x'"):
        paritybundle.export(TinyMLP(), tmp_path / "b", reference_inputs=X, name="../x")


class TwoInTwoOut(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(3, 2)
        self.b = torch.nn.Linear(5, 2)

    def forward(self, left, right):
        mixed = self.a(left) + self.b(right)
        return mixed.softmax(-1), mixed.sum(-1, keepdim=True)


def test_several_named_inputs_and_outputs(tmp_path):
    rng = np.random.default_rng(1)
    inputs = {"left": rng.normal(size=(9, 3)).astype(np.float32), "right": rng.normal(size=(9, 5)).astype(np.float32)}
    result = paritybundle.export(
        TwoInTwoOut(), tmp_path / "b", reference_inputs=inputs, name="two", output_names=["probs", "total"]
    )
    assert [s.name for s in result.manifest.inputs] == ["left", "right"]
    assert {s.name: s.kind for s in result.manifest.outputs} == {"probs": "scores", "total": "values"}
    assert paritybundle.check(tmp_path / "b")


def test_external_data_export_shares_one_weights_file_between_both_graphs(tmp_path):
    torch.manual_seed(0)
    wide = torch.nn.Sequential(torch.nn.Linear(4, 512), torch.nn.ReLU(), torch.nn.Linear(512, 3))  # 1 MB of weights
    result = paritybundle.export(wide, tmp_path / "b", reference_inputs=X, name="tiny", external_data=True)
    files = set(result.manifest.files)
    data_files = files - {
        "pipeline.onnx",
        "model.onnx",
        "reference/inputs.npz",
        "reference/outputs.npz",
        "environment.lock.json",
        "requirements-serve.txt",
    }
    assert len(data_files) == 1, files  # model.onnx and pipeline.onnx refer to the same side file
    from paritybundle.bundle.external_data import external_locations

    assert set(external_locations(tmp_path / "b" / "pipeline.onnx")) == data_files
    assert (tmp_path / "b" / "model.onnx").stat().st_size < 20_000
    assert (tmp_path / "b" / next(iter(data_files))).stat().st_size > 4 * 512 * 4
    assert paritybundle.check(tmp_path / "b").passed


def test_bundle_directory_is_readable_by_others(tmp_path):
    import stat

    paritybundle.export(TinyMLP(), tmp_path / "b", reference_inputs=X, name="tiny")
    mode = stat.S_IMODE((tmp_path / "b").stat().st_mode)
    assert mode & stat.S_IROTH and mode & stat.S_IXOTH, oct(mode)
