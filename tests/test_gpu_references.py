"""GPU-made references (measured on an H100; tests/data/gpu-references) checked on CPU ONNX Runtime.

Each model is exported, bundled with the outputs its research run produced on the GPU
under a given precision (the manifest records device and precision), and checked: the
default policy for that precision must pass, and a real defect must still fail.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import paritybundle
from bundle_tools import perturb_weights
from paritybundle.training import ExportSpec, export_spec

# Copied from ../shared/data/gpu-references (README, info.txt and the generator make_refs.py with
# them), so these tests run in every clone.
DATA = Path(__file__).resolve().parent / "data" / "gpu-references"
sys.path.insert(0, str(DATA))
import make_refs  # noqa: E402  (the generator's own model definitions, so weights match)

# How each measured setting is described to paritybundle, as a researcher would.
SETTINGS = {
    "cpu_torch": ("cpu", "fp32"),
    "gpu_strict": ("cuda", "fp32"),
    "gpu_default": ("cuda", "fp32"),
    "gpu_tf32": ("cuda", "tf32"),
    "gpu_bf16_autocast": ("cuda", "bf16"),
}


# The preset table of docs/concepts/parity.md, row by row: the worst share of its tolerance legitimate noise may use.
PRESET_ROW = {
    "cpu_torch": "cpu, fp32",
    "gpu_strict": "cuda, fp32",
    "gpu_default": "cuda, fp32",
    "gpu_tf32": "cuda, tf32",
    "gpu_bf16_autocast": "cuda or cpu, bf16 / fp16",
}


def _documented_shares() -> dict[str, float]:
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "concepts" / "parity.md").read_text()
    shares = {}
    for row in set(PRESET_ROW.values()):
        line = next(text for text in page.splitlines() if text.startswith(f"| {row}"))
        share = re.search(r"\| ([\d.]+)% / ", line)
        assert share is not None, line
        shares[row] = float(share.group(1)) / 100
    return shares


DOCUMENTED_SHARES = _documented_shares()


def test_the_documented_table_states_the_presets_and_at_least_2_8x_headroom():
    from paritybundle.parity.tolerance import default_tolerance

    assert max(DOCUMENTED_SHARES.values()) <= 1 / 2.8
    page = (Path(__file__).resolve().parents[1] / "docs" / "concepts" / "parity.md").read_text()
    for tag, (device, precision) in SETTINGS.items():
        preset = default_tolerance(device, precision)
        line = next(text for text in page.splitlines() if text.startswith(f"| {PRESET_ROW[tag]}"))
        atol, rtol = (float(cell) for cell in line.split("|")[2:4])
        assert (atol, rtol) == (preset.atol, preset.rtol), line


@pytest.fixture(scope="module", params=list(make_refs.MODELS))
def exported(request, tmp_path_factory):
    name = request.param
    refs = np.load(DATA / f"{name}.npz", allow_pickle=False)
    model, _ = make_refs.build(name)
    model.load_state_dict({k[3:]: torch.from_numpy(refs[k]) for k in refs.files if k.startswith("w::")})
    path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
    torch.onnx.export(
        model.eval(),
        (torch.from_numpy(refs["input"]),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
    )
    return name, path, refs


def _bundle(exported, tag, directory):
    name, onnx_path, refs = exported
    device, precision = SETTINGS[tag]
    spec = ExportSpec(
        model=str(onnx_path),
        reference_inputs={"x": refs["input"]},
        research_outputs={"y": refs[tag]},
        name=name,
        reference_device=device,
        reference_precision=precision,
        max_reference_samples=None,
    )
    return export_spec(spec, directory / f"{name}-{tag}").path


@pytest.mark.parametrize("tag", list(SETTINGS))
def test_gpu_references_pass_the_default_policy_for_their_precision(exported, tag, tmp_path):
    bundle = _bundle(exported, tag, tmp_path)  # export itself validates ORT vs the GPU outputs (fail closed)
    report = paritybundle.check(bundle)
    manifest = paritybundle.load(bundle).manifest
    assert (manifest.reference.device, manifest.reference.precision) == SETTINGS[tag]
    assert report.passed, [o.stats for o in report.outputs]
    # Headroom: legitimate noise uses at most the share of its preset the documented table states.
    assert report.outputs[0].stats.max_tolerance_ratio <= DOCUMENTED_SHARES[PRESET_ROW[tag]]


@pytest.mark.parametrize("tag", list(SETTINGS))
def test_real_defects_still_fail_against_gpu_references(exported, tag, tmp_path):
    bundle = _bundle(exported, tag, tmp_path)
    perturb_weights(bundle, relative_noise=0.05)  # 5% weight noise: caught under every precision
    assert not paritybundle.check(bundle).passed


@pytest.mark.parametrize("tag", ["cpu_torch", "gpu_default", "gpu_tf32"])
def test_one_percent_weight_noise_fails_at_fp32_and_tf32(exported, tag, tmp_path):
    bundle = _bundle(exported, tag, tmp_path)
    perturb_weights(bundle, relative_noise=0.01)
    assert not paritybundle.check(bundle).passed


def test_cpu_tight_tolerance_would_false_alarm_on_tf32_references(exported, tmp_path):
    """Why the policy must know the precision: the CPU default flags legitimate TF32 noise."""
    name, _, _ = exported
    bundle = _bundle(exported, "gpu_tf32", tmp_path)
    report = paritybundle.check(bundle, tolerance=paritybundle.Tolerance(atol=1e-4, rtol=1e-3))
    if name == "cnn":  # the cnn's TF32 error (9.9e-5) happens to fit the CPU tolerance
        assert report.passed
    else:
        assert not report.passed
