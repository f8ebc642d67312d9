"""Text in, text parity (issue 28): a Hugging Face tokenizer frozen into the bundle with onnxruntime-extensions.

The tokenizers and models are built from configs (examples/text/train.py): a WordPiece (BERT family) and a
byte-level BPE (GPT-2 family), trained in seconds on generated sentences; nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import _load_example, require  # noqa: E402
from test_container import base_image, docker_client  # noqa: E402,F401  (fixtures for the image test)

require("transformers", reason="transformers is a dev extra: pip install -e '.[dev]'")
require("onnxruntime_extensions", reason="onnxruntime-extensions is in the text extra: pip install -e '.[text]'")

import paritybundle  # noqa: E402
from paritybundle.bundle.store import read_manifest  # noqa: E402
from paritybundle.cli import main  # noqa: E402
from paritybundle.commands.endpoint import check_url  # noqa: E402
from paritybundle.errors import ExportParityError, InputValidationError, SpecError  # noqa: E402
from paritybundle.training import export_spec  # noqa: E402

example = _load_example("text")
TEXTS = [
    "A great film!",
    "Awful day.",
    "The cat sat on the mat, very happy 😀",
    "İstanbul’da ÇOK güzel — café!",
    "猫が好き and the worst story",
    "  tabs\tand\nnew lines  ",
    "x" * 300,
]


@pytest.fixture(scope="module")
def bert_bundle(tmp_path_factory):
    return export_spec(example.make_spec(steps=30), tmp_path_factory.mktemp("text") / "bert").path


@pytest.fixture(scope="module")
def gpt2_bundle(tmp_path_factory):
    return export_spec(example.make_gpt2_spec(steps=30), tmp_path_factory.mktemp("text") / "gpt2").path


def research_logits(spec, texts):
    """What research computes: the research tokenizer, then the torch model."""
    import torch

    tokenizer = spec.preprocess
    batch = tokenizer(
        texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
    )
    with torch.no_grad():
        return spec.model(**batch).logits.numpy()


def check_cli(bundle, capsys, *extra):
    code = main(["check", str(bundle), *map(str, extra)])
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


# --- export: the tokenizer frozen, proven, described ------------------------------------------------------


@pytest.mark.parametrize("which", ["bert_bundle", "gpt2_bundle"])
def test_a_text_bundle_takes_raw_strings_and_passes_its_own_check(which, request, capsys):
    bundle = request.getfixturevalue(which)
    manifest = read_manifest(bundle)
    assert [(s.name, s.dtype) for s in manifest.inputs] == [("text", "string")]
    assert manifest.runtime.custom_ops == ["onnxruntime-extensions"]
    assert "onnxruntime-extensions==" in (bundle / "requirements-serve.txt").read_text()
    code, out = check_cli(bundle, capsys)
    assert code == 0, out
    # The check localises by stage: the tokenizer (per feature) and the model.
    assert "column text -> input_ids" in out and "model.onnx" in out and "PARITY HOLDS" in out
    probes = manifest.coverage.probe_reasons
    assert "text probe: emoji" in probes and any("past the maximum length" in p for p in probes)


def test_the_tokenizer_settings_are_recorded_and_shown(bert_bundle, capsys):
    step = read_manifest(bert_bundle).preprocessing.columns[0].steps[0]
    settings = step.params
    assert step.kind == "tokenizer" and settings["family"] == "wordpiece"
    assert settings["lowercase"] is True and settings["strip_accents"] is True
    assert settings["max_length"] == example.MAX_LENGTH and settings["truncation_side"] == "right"
    assert settings["padding_side"] == "right" and settings["special_tokens"]["cls"] == "[CLS]"
    assert len(settings["vocab_sha256"]) == 64 and settings["model_max_positions"] == 64
    # Every character of planes 0-2 was proven in four contexts; nothing there is refused for this vocabulary.
    assert settings["refused_characters"].endswith("and 0 characters below it")
    assert main(["inspect", str(bert_bundle)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "tokenizer" in out and "lowercase True" in out and "max_length 32" in out and "vocab_sha256" in out


def test_tokenizers_that_differ_in_casing_or_length_are_a_diff(bert_bundle, tmp_path, capsys):
    cased = export_spec(example.make_spec(steps=30, lowercase=False), tmp_path / "cased").path
    shorter = export_spec(example.make_spec(steps=30, max_length=16), tmp_path / "short").path
    capsys.readouterr()
    assert main(["diff", str(bert_bundle), str(cased)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "lowercase" in out and "vocab_sha256" in out
    assert main(["diff", str(bert_bundle), str(shorter)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "max_length" in out


def test_a_tokenizer_the_graph_does_not_reproduce_is_refused_naming_the_text(tmp_path):
    """Research's tokenizer is a subclass that rewrites "film" as "movie" before tokenizing (a text cleanup its
    description does not show): the frozen graph cannot know, and export's token parity says where."""
    spec = example.make_spec(steps=1)
    original = type(spec.preprocess)

    class Rewriting(original):
        def __call__(self, text, *args, **kwargs):
            def rewrite(t):
                return t.replace("film", "movie")

            return super().__call__(
                [rewrite(t) for t in text] if isinstance(text, list) else rewrite(text), *args, **kwargs
            )

    spec.preprocess.__class__ = Rewriting
    with pytest.raises(ExportParityError) as caught:
        export_spec(spec, tmp_path / "b")
    message = str(caught.value)
    assert "frozen tokenizer disagrees with Rewriting on reference text" in message and "film" in message
    assert "input_ids at position" in message and "no bundle was written" in message
    assert not (tmp_path / "b").exists()


def test_a_tokenizer_it_cannot_convert_is_refused_with_a_sentence(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    unigram = Tokenizer(models.Unigram([("<unk>", 0.0), ("▁the", -1.0), ("▁cat", -2.0)], unk_id=0))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=unigram, unk_token="<unk>", pad_token="<unk>", model_max_length=16
    )
    spec = example.make_spec(steps=1)
    spec.preprocess = tokenizer
    with pytest.raises(SpecError, match="SentencePiece Unigram model.*tokenize this one outside the bundle"):
        export_spec(spec, tmp_path / "b")
    spec = example.make_spec(steps=1)
    spec.reference_inputs = {"text": ["fine", "nul\x00inside"]}
    export_spec(spec, tmp_path / "c")  # the NUL text is left out of the references, with a warning
    assert read_manifest(tmp_path / "c").reference.samples == 1 + len(
        read_manifest(tmp_path / "c").coverage.probe_reasons
    )


# --- serving raw text ------------------------------------------------------------------------------------


@pytest.mark.parametrize("which, make", [("bert_bundle", "make_spec"), ("gpt2_bundle", "make_gpt2_spec")])
def test_predict_on_raw_strings_gives_research_logits(which, make, request):
    bundle = request.getfixturevalue(which)
    spec = getattr(example, make)(steps=30)  # the same seed: the same weights as the bundle's
    texts = TEXTS if which == "bert_bundle" else TEXTS[:-1]
    got = paritybundle.load(bundle).predict({"text": texts})["logits"]
    np.testing.assert_allclose(got, research_logits(spec, texts), atol=1e-5, rtol=1e-4)


def test_text_the_tokenizer_was_not_proven_on_is_refused_with_a_sentence(bert_bundle, gpt2_bundle):
    runtime = paritybundle.load(bert_bundle)
    for text, said in (("nul\x00inside", r"U\+0000"), ("plane three \U00030001", r"U\+30001")):
        with pytest.raises(InputValidationError, match=f"text 0 holds .*{said}.*frozen tokenizer was not proven"):
            runtime.predict({"text": [text]})
    runtime.predict({"text": [""]})  # [CLS] [SEP]: BERT reads empty text
    with pytest.raises(InputValidationError, match="empty, which this bundle's tokenizer turns into no tokens"):
        paritybundle.load(gpt2_bundle).predict({"text": ["fine", ""]})


BLOCKED_SERVER = textwrap.dedent("""
    import sys
    class Blocked:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "onnxscript", "transformers", "tokenizers", "onnxruntime_extensions"):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Blocked())   # any import of these now raises ImportError
    from paritybundle.cli import main
    main(["serve", sys.argv[1], "--port", sys.argv[2]])
""")


@pytest.mark.parametrize("which, make", [("bert_bundle", "make_spec"), ("gpt2_bundle", "make_gpt2_spec")])
def test_served_with_torch_and_transformers_blocked_over_json_and_binary(which, make, request, tmp_path):
    """The custom-op library is registered from its file: the server never imports onnxruntime_extensions
    (which imports torch and transformers where they are installed), nor torch or transformers."""
    httpclient = require("tritonclient.http", reason="tritonclient is a dev extra")
    from serving_tools import Server, free_port

    bert_bundle = request.getfixturevalue(which)
    model = read_manifest(bert_bundle).name

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", BLOCKED_SERVER, str(bert_bundle), str(port)], stdout=sink, stderr=subprocess.STDOUT
        )
    server = Server(process, port, log)
    try:
        server.wait("ready")
        status, answer = server.post(
            f"/v2/models/{model}/infer",
            {"inputs": [{"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES", "data": TEXTS}]},
        )
        assert status == 200, answer
        as_json = np.array(answer["outputs"][0]["data"], np.float32).reshape(len(TEXTS), 2)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        item = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
        item.set_data_from_numpy(np.array(TEXTS, dtype=object))  # binary, length-prefixed
        binary = client.infer(model, [item]).as_numpy("logits")
        np.testing.assert_array_equal(binary, as_json)
        spec = getattr(example, make)(steps=30)
        np.testing.assert_allclose(as_json, research_logits(spec, TEXTS), atol=1e-5, rtol=1e-4)
        status, answer = server.post(
            f"/v2/models/{model}/infer",
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["bad \u0000 text"]}]},
        )
        assert status == 400 and "U+0000" in answer["error"]
        assert check_url(bert_bundle, server.url).passed
    finally:
        process.terminate()
        process.wait(timeout=30)


# --- the proof holds for text as production sends it ---------------------------------------------------------


def test_random_hostile_text_tokenizes_as_research_does_or_is_refused(bert_bundle):
    """Text built from letters, punctuation, emoji glued to words, combining marks, Unicode whitespace, controls,
    Latin Extended, RTL punctuation and CJK: every text either is refused naming a character, or the frozen
    tokenizer gives research's ids exactly (through preprocess.onnx, as serving runs it)."""
    import onnxruntime as ort

    from paritybundle.runtime.session import custom_op_library

    spec = example.make_spec(steps=1)
    tokenizer = spec.preprocess
    rng = np.random.default_rng(7)
    pieces = (
        list("abcdefgh XYZ .,!?'\t\n$^`~")
        + [
            "é",
            "ü",
            "猫",
            "😀",
            "👍🏽",
            "\u200b",
            "\ufffd",
            "\x07",
            "ﬁ",
            "Ⅻ",
            "e\u0301",
            "\u00a0",
            "’",
            "—",
            "¿",
            "\u2028",
            "ą",
            "Σ",
            "ß",
            "İ",
            "،",
            "ـ",
            "\u0483",
            "\x7f",
        ]
        + example.POSITIVE
        + example.NEUTRAL
    )
    texts = ["".join(rng.choice(pieces, rng.integers(0, 120))) for _ in range(300)]
    options = ort.SessionOptions()
    options.register_custom_ops_library(custom_op_library("onnxruntime-extensions"))
    session = ort.InferenceSession(str(bert_bundle / "preprocess.onnx"), options)
    frozen = session.run(["input_ids", "attention_mask"], {"text": np.array(texts, dtype=object)})
    research = tokenizer(
        texts, padding="max_length", truncation=True, max_length=example.MAX_LENGTH, return_tensors="np"
    )
    np.testing.assert_array_equal(frozen[0], research["input_ids"])
    np.testing.assert_array_equal(frozen[1], research["attention_mask"])


# --- production traffic: capture, check against it, drift of text ----------------------------------------


def test_captured_text_is_checked_and_its_drift_is_measured_in_tokens(bert_bundle, tmp_path, capsys):
    """Served raw text is captured (BYTES columns), re-checked against this runtime, and its drift is read as the
    model sees it: length in tokens and the share of unknown tokens, not as categories."""
    require("pyarrow", reason="captures are Parquet: the capture extra")
    from serving_tools import running_server

    capture = tmp_path / "capture"
    odd = ["★ ☃ ✓ 😀 film", "straße ★★ ☃ the cat", "✓ ✓ ✓ great"] * 4  # words the vocabulary lacks
    with running_server(bert_bundle, tmp_path, "--capture", str(capture)) as server:
        for text in TEXTS[:4] + odd:
            status, answer = server.post(
                "/v2/models/text/infer",
                {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]},
            )
            assert status == 200, answer
    capsys.readouterr()
    assert main(["check", str(bert_bundle), "--references", str(capture)]) == 0
    assert "PARITY HOLDS" in capsys.readouterr().out
    from paritybundle.check.input_drift import input_drift

    report = input_drift(bert_bundle, capture)
    columns = {c.column: c for c in report.columns}
    assert set(columns) == {"text (tokens)", "text (unknown-token share)"}
    assert not report.passed and "are unknown to the vocabulary" in report.summary
    assert columns["text (tokens)"].reference_range[1] <= example.MAX_LENGTH
    from paritybundle.training.replay import replay

    # The research path (the research tokenizer, then the torch model) on what production received.
    assert replay(example.make_spec(steps=30), capture, bundle=bert_bundle).passed


def test_batch_scoring_reads_a_string_column_and_refuses_unproven_text(bert_bundle, tmp_path, capsys):
    pa = require("pyarrow", reason="bundle score reads Parquet: the score extra")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [1, 2, 3], "text": TEXTS[:3]}), tmp_path / "rows.parquet")
    assert (
        main(
            ["score", str(bert_bundle), str(tmp_path / "rows.parquet"), "-o", str(tmp_path / "scores"), "--keep", "id"]
        )
        == 0
    )
    scored = pq.read_table(tmp_path / "scores").to_pydict()
    spec = example.make_spec(steps=30)
    np.testing.assert_allclose(np.array(scored["logits"]), research_logits(spec, TEXTS[:3]), atol=1e-5, rtol=1e-4)
    pq.write_table(pa.table({"id": [4], "text": ["nul \x00 inside"]}), tmp_path / "bad.parquet")
    capsys.readouterr()
    assert main(["score", str(bert_bundle), str(tmp_path / "bad.parquet"), "-o", str(tmp_path / "nothing")]) == 2
    captured = capsys.readouterr()
    said = " ".join((captured.out + captured.err).split())
    assert "U+0000" in said and "nothing written" in said and not (tmp_path / "nothing").exists()


# --- the serving image -----------------------------------------------------------------------------------


def test_the_serving_image_of_a_text_bundle_installs_the_operators_and_serves_raw_text(bert_bundle, request, capsys):
    """build-image installs the bundle's pins (onnxruntime-extensions among them) and gates on its own check;
    the container answers raw text as research did, without torch or transformers."""
    from serving_tools import free_port, wait_for
    from test_container import remove_image

    client, base = request.getfixturevalue("docker_client"), request.getfixturevalue("base_image")
    tag = "paritybundle-test-text:1"
    remove_image(client, tag)
    assert main(["build-image", str(bert_bundle), "-t", tag, "--base-image", base]) == 0, capsys.readouterr()
    assert "PARITY HOLDS" in capsys.readouterr().err  # the in-image check, streamed
    port = free_port()
    container = client.containers.run(tag, detach=True, read_only=True, ports={"8080/tcp": ("127.0.0.1", port)})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/v2/health/ready", 90, interval=0.5)
        assert check_url(bert_bundle, url).passed
        for module in ("torch", "transformers"):
            assert container.exec_run(["python3", "-c", f"import {module}"]).exit_code != 0
    finally:
        container.remove(force=True)
        remove_image(client, tag)


def test_a_tokenizer_that_swaps_two_words_is_caught_and_localised_to_it(bert_bundle, tmp_path, capsys):
    """The skew the issue measured passing before: ids of two words swapped in serving's tokenizer. The
    check now fails and says it is the tokenizer, not the model."""
    from bundle_tools import copy_bundle, edit_preprocess

    bundle = copy_bundle(bert_bundle, tmp_path / "swapped")

    def swap(model):
        body = next(n for n in model.graph.node if n.op_type == "Loop").attribute[0].g
        encoder = next(n for n in body.node if n.op_type == "LabelEncoder")
        keys = next(a for a in encoder.attribute if a.name == "keys_strings").strings
        values = next(a for a in encoder.attribute if a.name == "values_int64s").ints
        good, bad = list(keys).index(b"good"), list(keys).index(b"bad")
        values[good], values[bad] = values[bad], values[good]

    edit_preprocess(bundle, swap)
    capsys.readouterr()
    assert main(["check", str(bundle)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "preprocess.onnx" in out and "column 'text'" in out and "PARITY FAILS" in out


@pytest.mark.parametrize(
    "edit, said",
    [
        (lambda m: m["inputs"][0]["text"].update(refused_chars="ff-0"), "refused_chars"),
        (lambda m: m["runtime"].update(custom_ops=["/tmp/evil.so"]), "custom_ops"),
    ],
)
def test_a_hostile_manifest_cannot_name_a_library_or_break_the_refusal(bert_bundle, tmp_path, capsys, edit, said):
    import json

    from bundle_tools import copy_bundle

    bundle = copy_bundle(bert_bundle, tmp_path / "hostile")
    manifest = json.loads((bundle / "bundle.json").read_text())
    edit(manifest)
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["check", str(bundle)]) == 3
    captured = capsys.readouterr()
    assert said in captured.out + captured.err and "Traceback" not in captured.out + captured.err


def test_a_distilbert_classifier_reads_only_ids_and_mask(tmp_path, capsys):
    """The issue's user: a DistilBERT classifier built from a config, whose tokenizer gives no token types."""
    import tempfile
    from pathlib import Path

    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizerFast

    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    example.bert_tokenizer(folder)  # writes vocab.txt
    tokenizer = DistilBertTokenizerFast(str(folder / "vocab.txt"), model_max_length=32)
    torch.manual_seed(0)
    model = DistilBertForSequenceClassification(
        DistilBertConfig(
            vocab_size=tokenizer.vocab_size,
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=64,
            max_position_embeddings=64,
            num_labels=2,
        )
    ).eval()
    texts = example.sentences(60, seed=1)[0]
    bundle = export_spec(
        paritybundle.ExportSpec(model=model, preprocess=tokenizer, reference_inputs={"text": texts}, name="distil"),
        tmp_path / "b",
    ).path
    assert [f.name for f in read_manifest(bundle).preprocessing.features] == ["input_ids", "attention_mask"]
    capsys.readouterr()
    assert main(["check", str(bundle)]) == 0
    served = paritybundle.load(bundle).predict({"text": TEXTS})["logits"]
    batch = tokenizer(TEXTS, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        np.testing.assert_allclose(served, model(**batch).logits.numpy(), atol=1e-5, rtol=1e-4)


def test_reference_texts_serving_refuses_are_left_out_by_the_same_rule(tmp_path, capsys):
    """Export drops what serving's rule refuses (runtime.validation.text_refusal), so the bundle passes its
    own check: an empty text for a byte-level BPE (no tokens) made export fail with exit 2 before."""
    spec = example.make_gpt2_spec(steps=1)
    spec.reference_inputs = {"text": spec.reference_inputs["text"][:20] + ["", "x" * 100_001]}
    bundle = export_spec(spec, tmp_path / "b").path
    manifest = read_manifest(bundle)
    assert manifest.reference.samples == 20 + len(manifest.coverage.probe_reasons)
    assert manifest.preprocessing.columns[0].steps[0].params["probes_left_out"] == [
        "text probe: empty text (refused at serving: it is empty)"
    ]
    capsys.readouterr()
    assert main(["check", str(bundle)]) == 0
