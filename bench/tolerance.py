"""The tolerance tables of docs/concepts/parity.md, measured: ``python -m bench tolerance``.

1. The digits CNN (examples/digits, logits up to ~29) under the default CPU policy: the export-time
   error, a sweep of ONNX Runtime threads x optimisation levels x batch sizes, and two defects
   (0.1% weight noise, weights rounded to fp16), each as max abs error, the worst element's share
   of its tolerance, and the verdict.
2. The GPU-made references (tests/data/gpu-references: three models measured on an H100 under
   four precisions) under the preset for their precision: the worst share of the tolerance that
   legitimate noise uses (so the headroom), and the smallest weight noise that fails.

Not a timing: the numbers are properties of the policy. ``tests/test_gpu_references.py`` and ``tests/test_check.py`` assert
the properties that page states from these tables.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from ._common import print_table

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
GPU_DATA = TESTS / "data" / "gpu-references"
# How each measured GPU setting is described to paritybundle (as tests/test_gpu_references.py does).
GPU_SETTINGS = {
    "cpu_torch": ("cpu", "fp32"),
    "gpu_strict": ("cuda", "fp32"),
    "gpu_default": ("cuda", "fp32"),
    "gpu_tf32": ("cuda", "tf32"),
    "gpu_bf16_autocast": ("cuda", "bf16"),
}
NOISE_LEVELS = (0.001, 0.01, 0.05)


def _tools():
    sys.path.insert(0, str(TESTS))
    import bundle_tools

    return bundle_tools


def digits_rows(work: Path) -> list[tuple[str, ...]]:
    """Rows of the default-tolerance table, on a freshly trained and exported digits CNN."""
    import paritybundle
    from paritybundle.runtime.session import SessionOverrides

    sys.path.insert(0, str(ROOT / "examples" / "digits"))
    import train

    from paritybundle.training import export_spec

    bundle = export_spec(train.make_spec(), work / "digits").path
    manifest = paritybundle.verify(bundle).manifest
    tools = _tools()
    rows = []
    error = max(e.max_abs for e in manifest.export_errors.values())
    base = paritybundle.check(bundle)
    rows.append(("torch vs ORT at export", f"{error:.2g}", f"{_share(base)}", "pass" if base.passed else "FAIL"))
    worst_error, worst_share, runs, verdicts = 0.0, 0.0, 0, set()
    for threads in (1, 2):
        for level in ("disable", "basic", "extended", "all"):
            for batch in (1, 7, 64, None):
                report = paritybundle.check(
                    bundle,
                    settings=SessionOverrides(intra_op_num_threads=threads, graph_optimization_level=level),
                    batch_size=batch,
                )
                worst_error = max(worst_error, max(o.stats.max_abs for o in report.outputs))
                worst_share = max(worst_share, max(o.stats.max_tolerance_ratio for o in report.outputs))
                verdicts.add(report.passed)
                runs += 1
    rows.append(
        (
            f"ORT threads 1/2 x optimisation disable/basic/extended/all x batch 1/7/64/all ({runs} runs)",
            f"{worst_error:.2g}",
            f"at most {worst_share:.1%}",
            "pass" if verdicts == {True} else "FAIL",
        )
    )
    defects = {
        "noise": ("weights + 0.1% noise (manifest re-hashed)", lambda b: tools.perturb_weights(b, 0.001)),
        "fp16": ("weights rounded to fp16", tools.round_weights_to_fp16),
    }
    for folder, (label, damage) in defects.items():
        copy = tools.copy_bundle(bundle, work / folder)
        damage(copy)
        report = paritybundle.check(copy)
        stats = report.outputs[0].stats
        rows.append(
            (
                label,
                f"{stats.max_abs:.2g}",
                _share(report),
                f"**fail** ({stats.violations} of {stats.elements} elements)" if not report.passed else "pass",
            )
        )
    return rows


def gpu_rows(work: Path) -> list[tuple[str, ...]]:
    """Per precision preset: the worst share legitimate GPU noise uses, and the defects caught."""
    measured = gpu_measurements(work)
    rows = []
    presets = {
        "cpu, fp32": ["cpu_torch"],
        "cuda, fp32": ["gpu_strict", "gpu_default"],
        "cuda, tf32": ["gpu_tf32"],
        "cuda, bf16": ["gpu_bf16_autocast"],
    }
    for preset, tags in presets.items():
        shares = [measured[(model, tag)]["share"] for model, tag in measured if tag in tags]
        caught = [measured[(model, tag)]["caught"] for model, tag in measured if tag in tags]
        smallest = max(caught) if None not in caught else None
        rows.append(
            (
                preset,
                f"{max(shares):.0%}",
                f"{1 / max(shares):.1f}x",
                f"{smallest:.1%} weight noise" if smallest is not None else "none of 0.1/1/5%",
            )
        )
    return rows


def gpu_measurements(work: Path) -> dict[tuple[str, str], dict[str, float | None]]:
    """For each (model, precision tag): the worst share of its tolerance that the legitimate GPU noise uses,
    and the smallest of NOISE_LEVELS of weight noise the check catches (None: none)."""
    import torch

    import paritybundle
    from paritybundle.training import ExportSpec, export_spec

    sys.path.insert(0, str(GPU_DATA))
    import make_refs

    tools = _tools()
    results: dict[tuple[str, str], dict[str, float | None]] = {}
    for name in make_refs.MODELS:
        refs = np.load(GPU_DATA / f"{name}.npz", allow_pickle=False)
        model, _ = make_refs.build(name)
        model.load_state_dict({k[3:]: torch.from_numpy(refs[k]) for k in refs.files if k.startswith("w::")})
        onnx_path = work / f"{name}.onnx"
        torch.onnx.export(
            model.eval(),
            (torch.from_numpy(refs["input"]),),
            str(onnx_path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
        )
        for tag, (device, precision) in GPU_SETTINGS.items():
            spec = ExportSpec(
                model=str(onnx_path),
                reference_inputs={"x": refs["input"]},
                research_outputs={"y": refs[tag]},
                name=name,
                reference_device=device,
                reference_precision=precision,
                max_reference_samples=None,
            )
            bundle = export_spec(spec, work / f"{name}-{tag}").path
            report = paritybundle.check(bundle)
            caught = None
            for level in NOISE_LEVELS:
                copy = tools.copy_bundle(bundle, work / f"{name}-{tag}-{level}")
                tools.perturb_weights(copy, relative_noise=level)
                if not paritybundle.check(copy).passed:
                    caught = level
                    break
            results[(name, tag)] = {
                "share": report.outputs[0].stats.max_tolerance_ratio if report.passed else float("inf"),
                "caught": caught,
            }
    return results


def _share(report) -> str:
    ratio = max(o.stats.max_tolerance_ratio for o in report.outputs)
    return f"{ratio:.0%}" if ratio < 10 else f"{ratio:,.0f}x"


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="pb-tolerance-"))
    (work / "digits").mkdir()
    (work / "gpu").mkdir()
    try:
        print_table(
            "default tolerance on the digits CNN (references on cpu, fp32)",
            digits_rows(work / "digits"),
            header=("case", "max abs error", "worst element's share of its tolerance", "verdict"),
        )
        print_table(
            "presets against the H100 references (tests/data/gpu-references)",
            gpu_rows(work / "gpu"),
            header=("references", "worst share used by legitimate noise", "headroom", "smallest defect caught"),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
