"""Real models nobody here wrote, as their users pass them (issue 16): Hugging Face BERT and GPT-2 built
from configs (random init, no download), an LSTM over time steps, a CNN resizing images of any size,
and an ``.onnx`` whose weights sit in a side file. Each is exported with no wrapper, checked, and run
at a shape its reference set never held."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import require  # noqa: E402

torch = require("torch")
transformers = require("transformers", reason="transformers is a dev extra: pip install -e '.[dev]'")

from serving_tools import torch_blocked_server  # noqa: E402

import paritybundle  # noqa: E402
from paritybundle.errors import SpecError  # noqa: E402

VOCAB = 120


def _token_group(rows: int, length: int, seed: int) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1, VOCAB, (rows, length))
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


@pytest.fixture(scope="module")
def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return transformers.BertModel(config).eval()


@pytest.fixture(scope="module")
def bert_bundle(tiny_bert, tmp_path_factory) -> Path:
    """BertModel as it comes (it returns a ModelOutput), reference groups at lengths 8 and 16."""
    result = paritybundle.export(
        tiny_bert,
        tmp_path_factory.mktemp("bert") / "bert",
        name="tinybert",
        reference_inputs=[_token_group(12, 8, 0), _token_group(10, 16, 1)],
        dynamic_axes={"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}},
    )
    return result.path


def test_bert_exports_without_a_wrapper_with_groups_at_two_lengths(bert_bundle):
    manifest = paritybundle.verify(bert_bundle).manifest
    assert [(s.name, s.shape) for s in manifest.inputs] == [
        ("input_ids", ["batch", "seq"]),
        ("attention_mask", ["batch", "seq"]),
    ]
    outputs = {s.name: s for s in manifest.outputs}
    assert outputs["last_hidden_state"].shape == ["batch", "seq", 32]
    # A pooled state is not a distribution over classes, whatever its rank.
    assert outputs["pooler_output"].kind == "values" and outputs["last_hidden_state"].kind == "values"
    groups = manifest.reference.groups
    assert [(g.samples, g.shapes["input_ids"]) for g in groups] == [(12, [8]), (10, [16])]
    assert manifest.reference.samples == 22
    report = paritybundle.check(bert_bundle)
    assert report.passed and report.settings.samples == 22


def test_the_worst_element_is_named_by_group_and_sample(bert_bundle):
    report = paritybundle.check(bert_bundle)
    for output in report.outputs:
        group, sample = output.worst_group, output.worst_group_sample
        assert group in (0, 1)
        assert output.stats.worst_sample == sample + (12 if group == 1 else 0)


def test_testdata_writes_one_set_per_group(bert_bundle, tmp_path):
    from paritybundle.commands.testdata import write_testdata

    result = write_testdata(bert_bundle, tmp_path / "td")
    assert result.sets == 2 and result.samples == 22
    from paritybundle.check.checks import check_testdata

    report = check_testdata(bert_bundle, result.path)
    assert report.passed


def test_bert_served_without_torch_answers_tritonclient_defaults_at_a_third_length(bert_bundle, tiny_bert, tmp_path):
    """tritonclient sends and asks for binary tensors by default; length 24 is in no reference group."""
    httpclient = require("tritonclient.http", reason="tritonclient is a dev extra")
    with torch_blocked_server(bert_bundle, tmp_path) as server:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        feed = _token_group(3, 24, 7)
        inputs = []
        for name, array in feed.items():
            item = httpclient.InferInput(name, list(array.shape), "INT64")
            item.set_data_from_numpy(array.astype(np.int64))  # binary_data=True: tritonclient's default
            inputs.append(item)
        answer = client.infer("tinybert", inputs)
        for output in answer.get_response()["outputs"]:
            assert "binary_data_size" in output["parameters"]  # answered as bytes, as asked by default
        with torch.no_grad():
            expected = tiny_bert(**{k: torch.from_numpy(v) for k, v in feed.items()})
        np.testing.assert_allclose(
            answer.as_numpy("last_hidden_state"), expected.last_hidden_state.numpy(), atol=1e-4, rtol=1e-3
        )
        np.testing.assert_allclose(
            answer.as_numpy("pooler_output"), expected.pooler_output.numpy(), atol=1e-4, rtol=1e-3
        )


def test_gpt2_exports_logits_per_token_and_drops_its_cache_with_a_notice(tmp_path, caplog):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = [np.random.default_rng(s).integers(1, VOCAB, (6, length)) for s, length in ((0, 5), (1, 11))]
    with caplog.at_level("WARNING", logger="paritybundle.export"):
        result = paritybundle.export(
            model,
            tmp_path / "gpt",
            name="gpt",
            dynamic_axes={"input_ids": {1: "seq"}},
            reference_inputs=[{"input_ids": ids[0]}, {"input_ids": ids[1]}],
        )
    assert "use_cache=False" in caplog.text
    (logits,) = result.manifest.outputs
    assert (logits.name, logits.shape, logits.kind) == ("logits", ["batch", "seq", VOCAB], "scores")
    report = paritybundle.check(result.path)
    assert report.passed
    decision = report.outputs[0].decision
    assert decision.per_position and decision.samples == 6 * 5 + 6 * 11  # one decision per token
    served = paritybundle.load(result.path).predict({"input_ids": ids[0][:2, :3]})  # a length never referenced
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(ids[0][:2, :3])).logits.numpy()
    np.testing.assert_allclose(served["logits"], expected, atol=1e-4, rtol=1e-3)


class _LSTMClassifier(torch.nn.Module):  # type: ignore[name-defined]  # torch from require(), a value
    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 8, batch_first=True)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, steps):
        states, _ = self.lstm(steps)
        return self.head(states[:, -1])


def test_lstm_exports_with_a_dynamic_time_axis(tmp_path):
    torch.manual_seed(0)
    model = _LSTMClassifier().eval()
    series = [np.random.default_rng(t).normal(size=(16, t, 4)).astype(np.float32) for t in (5, 9)]
    result = paritybundle.export(
        model,
        tmp_path / "lstm",
        name="lstm",
        reference_inputs=[(s,) for s in series],
        dynamic_axes={"steps": {1: "time"}},
    )
    assert result.manifest.inputs[0].shape == ["batch", "time", 4]
    assert paritybundle.check(result.path).passed
    unseen = np.random.default_rng(3).normal(size=(2, 7, 4)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(unseen)).numpy()
    np.testing.assert_allclose(paritybundle.load(result.path).predict(unseen)["output"], expected, atol=1e-5)


class _ResizingCNN(torch.nn.Module):  # type: ignore[name-defined]  # torch from require(), a value
    """Images of any height and width, resized inside the model (an ONNX Resize on dynamic H/W)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 16 * 16, 5)

    def forward(self, images):
        resized = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
        return self.head(torch.relu(self.conv(resized)).flatten(1))


def test_cnn_behind_resize_exports_with_dynamic_height_and_width(tmp_path):
    torch.manual_seed(0)
    model = _ResizingCNN().eval()
    images = [np.random.default_rng(h).random((8, 3, h, w)).astype(np.float32) for h, w in ((20, 24), (32, 28))]
    result = paritybundle.export(
        model,
        tmp_path / "cnn",
        name="cnn",
        reference_inputs=[{"images": i} for i in images],
        dynamic_axes={"images": {2: "height", 3: "width"}},
    )
    assert result.manifest.inputs[0].shape == ["batch", 3, "height", "width"]
    assert paritybundle.check(result.path).passed
    unseen = np.random.default_rng(9).random((2, 3, 40, 17)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(unseen)).numpy()
    np.testing.assert_allclose(
        paritybundle.load(result.path).predict({"images": unseen})["output"], expected, atol=1e-5
    )


def test_groups_may_differ_only_along_declared_axes(tmp_path):
    model = _LSTMClassifier().eval()
    series = [np.zeros((4, t, 4), np.float32) for t in (5, 9)]
    with pytest.raises(SpecError, match=r"differ along axis 1 of 'steps' \(\[5, 9\]\).*dynamic_axes"):
        paritybundle.export(model, tmp_path / "x", name="x", reference_inputs=[(s,) for s in series])


def test_a_dynamic_axis_exercised_at_one_size_is_warned_about(tmp_path, caplog):
    model = _LSTMClassifier().eval()
    with caplog.at_level("WARNING", logger="paritybundle.export"):
        paritybundle.export(
            model,
            tmp_path / "x",
            name="x",
            reference_inputs=(np.zeros((4, 5, 4), np.float32),),
            dynamic_axes={"steps": {1: "time"}},
        )
    assert "exercised at one size only" in caplog.text


# --- an .onnx made elsewhere, with its weights in a side file ----------------------------------------


@pytest.fixture(scope="module")
def onnx_with_data(tmp_path_factory):
    """torch 2.13's exporter (dynamo) writes NAME.onnx plus NAME.onnx.data by default."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    folder = tmp_path_factory.mktemp("made-elsewhere")
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    program = torch.onnx.export(
        model,
        (torch.from_numpy(x[:4]),),
        dynamo=True,
        input_names=["x"],
        output_names=["y"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    program.save(str(folder / "net.onnx"), external_data=True)
    assert (folder / "net.onnx.data").is_file()
    with torch.no_grad():
        research = model(torch.from_numpy(x)).numpy()
    return folder / "net.onnx", x, research


def test_onnx_with_external_data_is_bundled_with_its_data(onnx_with_data, tmp_path):
    path, x, research = onnx_with_data
    for external, files in (
        (None, {"model.onnx", "pipeline.onnx"}),
        (True, {"model.onnx", "model.onnx.data", "pipeline.onnx"}),
    ):
        result = paritybundle.export(
            str(path),
            tmp_path / f"b-{external}",
            name="net",
            reference_inputs={"x": x},
            research_outputs={"y": research},
            external_data=external,
        )
        graphs = {name for name in result.manifest.files if name.startswith(("model.", "pipeline."))}
        assert graphs == files
        assert paritybundle.check(result.path).passed


def test_onnx_whose_data_file_is_missing_is_refused_with_exit_2(onnx_with_data, tmp_path):
    path, x, research = onnx_with_data
    lonely = tmp_path / "net.onnx"
    lonely.write_bytes(path.read_bytes())  # without net.onnx.data beside it
    with pytest.raises(SpecError, match="net.onnx.data.*missing") as caught:
        paritybundle.export(
            str(lonely), tmp_path / "b", name="net", reference_inputs={"x": x}, research_outputs={"y": research}
        )
    assert caught.value.exit_code == 2
    assert not (tmp_path / "b").exists()


def test_inspect_shows_named_dims_and_v2_metadata_gives_them_as_minus_one(bert_bundle):
    from paritybundle.serving.wire import tensor_metadata

    manifest = paritybundle.verify(bert_bundle).manifest
    assert tensor_metadata(manifest.inputs[0])["shape"] == [-1, -1]
    assert json.loads(manifest.to_json())["inputs"][0]["shape"] == ["batch", "seq"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda groups: groups[1].update(samples=11), "add up to the reference set's samples"),
        (lambda groups: groups[0].update(inputs="reference/group_1/inputs.npz"), "first reference group must name"),
        (lambda groups: groups[1].update(outputs="reference/elsewhere.npz"), "referenced but not listed"),
        (lambda groups: groups[1].update(outputs="reference/outputs.npz"), "must not share files"),
    ],
)
def test_hostile_group_entries_are_refused_before_anything_is_read(bert_bundle, tmp_path, edit, message):
    from bundle_tools import copy_bundle
    from paritybundle.errors import BundleInvalid

    bundle = copy_bundle(bert_bundle, tmp_path / "b")
    manifest = json.loads((bundle / "bundle.json").read_text())
    edit(manifest["reference"]["groups"])
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleInvalid, match=message):
        paritybundle.check(bundle)


def test_a_group_file_that_lies_about_its_rows_is_refused(bert_bundle, tmp_path):
    """Group 1's arrays swapped for group 0's (re-hashed): declared 10 rows of length 16, holds 12 of 8."""
    from bundle_tools import copy_bundle, rehash
    from paritybundle.errors import BundleInvalid

    bundle = copy_bundle(bert_bundle, tmp_path / "b")
    for part in ("inputs", "outputs"):
        (bundle / "reference" / "group_1" / f"{part}.npz").write_bytes(
            (bundle / "reference" / f"{part}.npz").read_bytes()
        )
    rehash(bundle)
    with pytest.raises(BundleInvalid, match="holds 12 samples, but the manifest declares 10"):
        paritybundle.check(bundle)
