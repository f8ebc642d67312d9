"""A verdict holds one row per request (issue 27, item 3): a model whose row outputs depend on the rest of
the batch is refused at export, and a bundle of one made before that fails `check`, the server's
start-up check and `check --url`, the report naming batch composition.

Was: BatchNorm on batch statistics (``track_running_stats=False``) exported, checked, served ready and
passed ``check --url`` at the default batch of 1024, while one row per request agreed with research on
65% of classes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from serving_tools import running_server

import paritybundle
from paritybundle.cli import main
from paritybundle.errors import ExportParityError


class BatchStatistics(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(8, 16)
        self.norm = torch.nn.BatchNorm1d(16, track_running_stats=False)  # batch statistics, even in eval mode
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.linear(x))))


class RunningStatistics(BatchStatistics):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = torch.nn.BatchNorm1d(16)


ROWS = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)


def test_export_refuses_a_model_that_uses_batch_statistics(tmp_path):
    with pytest.raises(
        ExportParityError,
        match=r"batch dependence: .*rows run alone \(16 sampled of 200\) differ "
        r".*BatchNorm with track_running_stats=False",
    ):
        paritybundle.export(BatchStatistics().eval(), tmp_path / "bundle", reference_inputs=ROWS, name="bn")
    assert not (tmp_path / "bundle").exists()


def test_a_model_with_running_statistics_exports_and_its_rows_pass_alone(tmp_path):
    result = paritybundle.export(RunningStatistics().eval(), tmp_path / "bundle", reference_inputs=ROWS, name="bn")
    report = paritybundle.check(result.path)
    assert report.passed
    (alone,) = [s for s in report.stages if s.stage == "rows alone"]
    assert alone.passed and "reference rows 0, 13," in alone.file and len(alone.outputs) == 1


@pytest.fixture(scope="module")
def made_before(tmp_path_factory):
    """A batch-dependent bundle as an export without the refusal made it (before issue 27)."""
    import importlib

    export_module = importlib.import_module("paritybundle.training.export")
    saved = export_module.refuse_batch_dependence
    export_module.refuse_batch_dependence = lambda *args, **kwargs: None
    try:
        return paritybundle.export(
            BatchStatistics().eval(), tmp_path_factory.mktemp("old") / "bn", reference_inputs=ROWS, name="bn"
        ).path
    finally:
        export_module.refuse_batch_dependence = saved


def test_check_fails_it_naming_batch_composition(made_before, capsys):
    report = paritybundle.check(made_before)
    assert all(o.passed for o in report.outputs)  # the batched pass alone would have said PARITY HOLDS
    assert not report.passed
    assert report.diagnosis.startswith("batch composition: the reference rows reproduce research when run together")
    assert main(["check", str(made_before)]) == 1
    assert "where: batch composition" in capsys.readouterr().out.replace("\n", " ")


def test_the_server_stays_not_ready(made_before, tmp_path):
    with running_server(made_before, tmp_path, until="settled") as server:
        status, body = server.get("/v2/health/ready")
    assert status == 503 and "batch composition" in body["reason"]


def test_check_url_fails_it_against_a_stack_that_serves_it_anyway(made_before):
    """Another serving stack (here: this runtime answering each request in-process, whole) has no
    start-up check: `check --url` must still find that its answers hold only at the batch research used."""
    from paritybundle.check.checks import check_endpoint

    runtime = paritybundle.load(made_before)

    class ServesAnything:
        def check_model(self, name, manifest):
            return None

        def infer_all(self, name, manifest, inputs, batch):
            parts = [
                runtime.predict({k: v[i : i + batch] for k, v in inputs.items()})
                for i in range(0, len(next(iter(inputs.values()))), batch)
            ]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    report = check_endpoint(made_before, ServesAnything(), url="http://in-process", request_batch=1024)
    assert all(o.passed for o in report.outputs) and not report.passed
    assert report.diagnosis.startswith("batch composition")


def test_a_bundle_failing_everywhere_is_not_blamed_on_batch_composition(bundle_copy):
    """The single-row pass fails too when every row is wrong (perturbed weights): that is no batch effect."""
    from bundle_tools import perturb_weights

    perturb_weights(bundle_copy, 0.01)
    report = paritybundle.check(bundle_copy)
    assert not report.passed and not all(o.passed for o in report.outputs)
    assert [s.passed for s in report.stages if s.stage == "rows alone"] == [False]
    assert report.diagnosis is None or "batch composition" not in report.diagnosis
