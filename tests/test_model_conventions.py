"""How torch models are called and what they return (issue 16, problems 2, 3 and 5): inputs mapped to
``forward``'s parameters, outputs of every common structure flattened and named, outputs serving
cannot split refused at export with exit 2, and decisions judged per position."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
from conftest import require  # noqa: E402
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = require("torch")

import paritybundle  # noqa: E402
from paritybundle.bundle.manifest import Tolerance  # noqa: E402
from paritybundle.cli import main  # noqa: E402
from paritybundle.errors import SpecError  # noqa: E402
from paritybundle.parity.decision import decision_agreement  # noqa: E402

Pair = collections.namedtuple("Pair", ["mean", "spread"])


class _Structured(torch.nn.Module):  # type: ignore[name-defined]  # torch from require(), a value
    """Returns a dict holding a tensor, a namedtuple, a nested tuple and a None."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 4)

    def forward(self, left, right):
        y = self.linear(left - right)
        return {
            "logits": y,
            "stats": Pair(y.mean(dim=1, keepdim=True), y.std(dim=1, keepdim=True)),
            "extra": (y * 2, (y + 1,)),
            "unused": None,
        }


def _rows(count: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 3)).astype(np.float32)


def test_dicts_namedtuples_and_nested_tuples_are_flattened_and_named(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="paritybundle.export"):
        result = paritybundle.export(
            _Structured().eval(), tmp_path / "b", name="s", reference_inputs={"left": _rows(), "right": _rows(seed=1)}
        )
    names = [o.name for o in result.manifest.outputs]
    assert names == ["logits", "stats.mean", "stats.spread", "extra.0", "extra.1.0"]
    assert "unused: NoneType, not a tensor" in caplog.text  # dropped, with a notice
    assert paritybundle.check(result.path).passed


def test_output_names_still_override_the_derived_ones(tmp_path):
    result = paritybundle.export(
        _Structured().eval(),
        tmp_path / "b",
        name="s",
        reference_inputs={"left": _rows(), "right": _rows(seed=1)},
        output_names=["a", "b", "c", "d", "e"],
    )
    assert [o.name for o in result.manifest.outputs] == ["a", "b", "c", "d", "e"]


def test_mapping_keys_reach_forward_by_keyword_and_a_tuple_by_position(tmp_path):
    left, right = _rows(), _rows(seed=1)
    model = _Structured().eval()
    swapped = paritybundle.export(model, tmp_path / "kw", name="s", reference_inputs={"right": right, "left": left})
    positional = paritybundle.export(model, tmp_path / "pos", name="s", reference_inputs=(left, right))
    assert [i.name for i in positional.manifest.inputs] == ["left", "right"]  # named after forward's parameters
    by_keyword = paritybundle.load(swapped.path).predict({"left": left, "right": right})["logits"]
    by_position = paritybundle.load(positional.path).predict({"left": left, "right": right})["logits"]
    np.testing.assert_array_equal(by_keyword, by_position)  # "right" fed right, though given first


def test_a_key_naming_no_parameter_is_exit_2_listing_the_parameters(tmp_path, capsys):
    spec_file = tmp_path / "train.py"
    spec_file.write_text(
        "import numpy as np, torch\nfrom paritybundle import ExportSpec\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__(); self.l = torch.nn.Linear(3, 2)\n"
        "    def forward(self, left, right):\n        return self.l(left + right)\n"
        "def make_spec():\n"
        "    x = np.ones((4, 3), np.float32)\n"
        "    return ExportSpec(model=M(), reference_inputs={'left': x, 'rihgt': x}, name='m')\n"
    )
    assert main(["export", f"{spec_file}:make_spec", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "'rihgt' names no parameter of M.forward (left, right)" in err
    assert "Traceback" not in err and not (tmp_path / "b").exists()


class _Scalar(torch.nn.Module):  # type: ignore[name-defined]  # torch from require(), a value
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x):
        y = self.linear(x)
        return y, y.sum()


class _ClassesFirst(torch.nn.Module):  # type: ignore[name-defined]  # torch from require(), a value
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.linear(x).T  # [classes, batch]


@pytest.mark.parametrize(
    "model, samples, message",
    [
        (_Scalar, 8, "output 'output_1' is a single number"),
        (_ClassesFirst, 32, "first axis is not the batch"),  # was: a bundle that failed its own check
        (_ClassesFirst, 300, "first axis is not the batch"),  # was: exit 70 concatenating chunks of 256
    ],
)
def test_outputs_serving_cannot_split_are_exit_2_with_what_to_do(model, samples, message, tmp_path, capsys):
    spec_file = tmp_path / "train.py"
    spec_file.write_text(
        "import numpy as np\nfrom paritybundle import ExportSpec\n"
        f"from test_model_conventions import {model.__name__}\n"
        f"def make_spec():\n    return ExportSpec(model={model.__name__}(), name='m',\n"
        f"        reference_inputs=np.random.default_rng(0).normal(size=({samples}, 3)).astype(np.float32))\n"
    )
    assert main(["export", f"{spec_file}:make_spec", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


class _Shaped(torch.nn.Module):  # type: ignore[name-defined]  # torch from require(), a value
    """An output of ``rank`` dims with the batch at ``batch_axis`` (the other dims 4, 5, 6...)."""

    def __init__(self, rank: int, batch_axis: int) -> None:
        super().__init__()
        self.rank, self.batch_axis = rank, batch_axis
        self.linear = torch.nn.Linear(3, 4 * 5 * 6)

    def forward(self, x):
        y = self.linear(x)
        trailing = [4, 5, 6][: self.rank - 1]
        y = y[:, : int(np.prod(trailing))].reshape(x.shape[0], *trailing) if trailing else y.sum(dim=1)
        return y.movedim(0, self.batch_axis)


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rank=st.integers(1, 4), data=st.data(), samples=st.sampled_from([1, 2, 3, 255, 256, 257, 1023, 1024, 1025]))
def test_every_output_shape_is_supported_end_to_end_or_refused_with_exit_2(rank, data, samples, tmp_path_factory):
    """Around the chunk sizes (256 rows per torch call, 1024 per ONNX Runtime call): never exit 70, never a
    bundle that fails its own check."""
    batch_axis = data.draw(st.integers(0, rank - 1), label="batch_axis")
    torch.manual_seed(0)
    model = _Shaped(rank, batch_axis).eval()
    x = np.random.default_rng(samples).normal(size=(samples, 3)).astype(np.float32)
    out = tmp_path_factory.mktemp("shape") / "b"
    try:
        result = paritybundle.export(model, out, name="shape", reference_inputs=x, max_reference_samples=None)
    except SpecError as exc:
        assert exc.exit_code == 2
        assert batch_axis != 0 and "first axis is not the batch" in str(exc)
        assert not Path(out).exists()
        return
    assert batch_axis == 0
    assert result.manifest.outputs[0].shape[0] == "batch" and len(result.manifest.outputs[0].shape) == rank
    assert paritybundle.check(result.path).passed


def test_a_single_flipped_token_fails_decision_agreement():
    """Was: [batch, seq, vocab] flattened to one argmax per sample, so a per-token flip passed."""
    rng = np.random.default_rng(0)
    research = rng.normal(size=(4, 10, 50)).astype(np.float32)
    served = research.copy()
    sample, token = 2, 7
    top = research[sample, token].argmax()
    served[sample, token, (top + 1) % 50] = research[sample, token, top] + 1.0  # another class wins
    decision = decision_agreement(served, research, Tolerance(atol=1e-6, rtol=0), 1.0)
    assert decision.per_position and decision.samples == 40
    assert decision.agreeing == 39 and not decision.passed
    assert decision.disagreeing_samples == [sample]


def test_scores_of_rank_above_two_are_detected_by_name_only():
    from paritybundle.training.coverage import is_score_like

    logits = np.zeros((2, 5, 7), np.float32)
    assert is_score_like("logits", logits) and is_score_like("start_logits", logits)
    assert not is_score_like("last_hidden_state", logits)
    assert not is_score_like("pooler_output", np.zeros((2, 7), np.float32))
    assert is_score_like("output", np.zeros((2, 7), np.float32))


def test_export_failure_gives_the_exporters_cause_and_verbose_the_trace(tmp_path, capsys):
    """Was: torch's step banner and raw ANSI codes, the line saying why dropped, and no --verbose."""
    spec_file = tmp_path / "train.py"
    spec_file.write_text(
        "import numpy as np, torch\nfrom paritybundle import ExportSpec\n"
        "class GRUPacked(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__(); self.gru = torch.nn.GRU(4, 8, batch_first=True)\n"
        "    def forward(self, x, lengths):\n"
        "        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)\n"
        "        return self.gru(packed)[1][-1]\n"
        "def make_spec():\n"
        "    x = np.random.default_rng(0).normal(size=(4, 5, 4)).astype(np.float32)\n"
        "    return ExportSpec(model=GRUPacked(), reference_inputs=(x, np.array([5, 3, 2, 4])), name='gru')\n"
    )
    assert main(["export", f"{spec_file}:make_spec", "-o", str(tmp_path / "b")]) == 5
    err = capsys.readouterr().err
    assert "could not convert GRUPacked: TypeError:" in err  # the cause, not the banner
    assert "\x1b" not in err and "step 1/3" not in err and "Traceback" not in err
    assert main(["export", f"{spec_file}:make_spec", "-o", str(tmp_path / "b"), "--verbose"]) == 5
    err = capsys.readouterr().err
    assert "Traceback" in err and err.count("  File ") > 5  # the frames inside torch.export
    assert err.rstrip().splitlines()[-1].startswith("error: torch's ONNX exporter")
