"""Large reference sets are checked in streaming batches: same exact statistics, flat memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

import paritybundle


@pytest.fixture(scope="module")
def wide_bundle(tmp_path_factory):
    """20,000 samples x 512 features (40 MB of inputs) through a small linear model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    x = np.random.default_rng(0).normal(size=(20_000, 512)).astype(np.float32)
    return paritybundle.export(
        model,
        tmp_path_factory.mktemp("wide") / "b",
        reference_inputs=x,
        name="wide",
        max_reference_samples=None,
        exporter="torchscript",
    ).path


@pytest.fixture(autouse=True)
def always_stream(monkeypatch):
    # The 40 MB set would be read whole (under 256 MiB); make it stream.
    from paritybundle.check import sources

    monkeypatch.setattr(sources, "STREAM_ABOVE_BYTES", 1024 * 1024)


def test_streamed_statistics_equal_the_whole_array_ones(wide_bundle):
    whole = paritybundle.check(wide_bundle, batch_size=None).outputs[0]
    streamed = paritybundle.check(wide_bundle, batch_size=777).outputs[0]
    assert whole.passed and streamed.passed
    a, b = whole.stats, streamed.stats
    assert (a.elements, a.violations, a.worst_index, a.max_abs, a.max_rel, a.p99_abs, a.p99_rel) == (
        b.elements,
        b.violations,
        b.worst_index,
        b.max_abs,
        b.max_rel,
        b.p99_abs,
        b.p99_rel,
    )
    assert b.mean_abs == pytest.approx(a.mean_abs, rel=1e-9) and b.mean_rel == pytest.approx(a.mean_rel, rel=1e-9)
    assert whole.decision.agreement == streamed.decision.agreement


def test_streamed_failures_locate_the_same_samples(wide_bundle, tmp_path):
    from bundle_tools import copy_bundle, perturb_weights

    bundle = copy_bundle(wide_bundle, tmp_path / "bad")
    perturb_weights(bundle, relative_noise=0.01)
    whole = paritybundle.check(bundle, batch_size=None).outputs[0]
    streamed = paritybundle.check(bundle, batch_size=500).outputs[0]
    assert not whole.passed and not streamed.passed
    assert whole.failing_samples == streamed.failing_samples
    assert whole.failing_sample_count == streamed.failing_sample_count
    assert whole.stats.required_atol == streamed.stats.required_atol


def test_memory_stays_flat_while_checking_in_batches(wide_bundle):
    paritybundle.check(wide_bundle, batch_size=512)  # warm caches
    tracemalloc.start()
    paritybundle.check(wide_bundle, batch_size=512)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    inputs_bytes = 20_000 * 512 * 4
    # One batch of inputs (1 MiB), 1% of the outputs for the exact p99, and the hashing's 1 MiB
    # read buffer, live while the session is created alongside it: ~5 MiB, not the 40 MB set.
    assert peak < inputs_bytes / 6, f"peak {peak / 2**20:.1f} MiB"


def test_running_top_one_percent_gives_the_exact_p99(monkeypatch):
    """Past KEEP_ALL_ELEMENTS only the largest 1% is kept between batches; p99 stays exact."""
    from paritybundle.bundle.manifest import Tolerance
    from paritybundle.parity import accumulator as accumulator_module
    from paritybundle.parity.accumulator import OutputAccumulator

    monkeypatch.setattr(accumulator_module, "KEEP_ALL_ELEMENTS", 1000)
    rng = np.random.default_rng(5)
    research = rng.normal(size=(30_000, 7))
    serve = research + rng.normal(scale=1e-6, size=research.shape) * rng.pareto(1.5, size=research.shape)
    accumulator = OutputAccumulator("y", Tolerance(atol=1e-4, rtol=1e-3), research.size)
    for start in range(0, 30_000, 1234):
        accumulator.add(serve[start : start + 1234], research[start : start + 1234], start)
    stats = accumulator.finish().stats
    errors = np.abs(serve - research)
    assert stats.p99_abs == pytest.approx(float(np.percentile(errors, 99)), rel=1e-12)
    assert stats.p99_rel == pytest.approx(
        float(np.percentile(errors / np.maximum(np.abs(research), 1e-12), 99)), rel=1e-12
    )
