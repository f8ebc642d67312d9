"""The defect and benign cases a verdict must tell apart (issue 15), as builders.

``tests/test_verdict.py`` asserts each case's outcome; ``python -m bench verdict`` prints each case's
margin (its worst element's share of the tolerance) and the smallest weight perturbation its
reference set detects. Models are built here, from seeds: nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from bundle_tools import copy_bundle, edit_preprocess, perturb_weights, rehash, round_weights_to_fp16


class TinyLogits(torch.nn.Module):
    """A CNN whose logits are about 1e-9 (as a freshly initialised MobileNet's are): differences
    between two seeds are far below a fixed atol of 1e-4."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
        )
        self.head = torch.nn.Linear(8, 10)
        with torch.no_grad():
            self.head.weight.mul_(1e-8)
            self.head.bias.mul_(1e-9)

    def forward(self, images):
        return self.head(self.features(images))


class RareEvent(torch.nn.Module):
    """A scorer whose probabilities are about 1e-4 (a fraud or failure model): x1.2 is 2e-5 absolute."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.linear = torch.nn.Linear(8, 1)
        with torch.no_grad():
            self.linear.weight.mul_(0.3)
            self.linear.bias.fill_(-9.2)

    def forward(self, x):
        return torch.sigmoid(self.linear(x))


def tiny_images(n: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 16, 16)).astype(np.float32)


def rare_inputs(n: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)


# --- a tabular model with a category that is rare in training -------------------------------------

COMMON, RARE = ["north", "south", "east"], ["island", "polar"]


def region_data(n: int, seed: int, with_rare: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    regions = list(rng.choice(COMMON, size=n))
    if with_rare:
        regions[:6] = ["island", "island", "island", "polar", "polar", "polar"]
    return {"amount": rng.gamma(2.0, 50.0, size=n).astype(np.float32), "region": np.array(regions, dtype=str)}


class RegionModel(torch.nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.net = torch.nn.Sequential(torch.nn.Linear(features, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))

    def forward(self, features):
        return self.net(features)


def export_region(directory: Path, **options) -> Path:
    """Preprocessing fitted on training data holding two rare regions; the caller's reference rows
    (the first 64 test rows) never show them."""
    import paritybundle
    from paritybundle import preprocess as pp

    train = region_data(400, seed=1, with_rare=True)
    pre = pp.Columns({"amount": [pp.Standardize()], "region": [pp.OneHot()]}, output="features").fit(train)
    model = RegionModel(features=pre.transform(train).shape[1])
    reference = region_data(64, seed=2, with_rare=False)
    return paritybundle.export(
        model, directory, preprocess=pre, reference_inputs=reference, name="region", **options
    ).path


def swap_categories(bundle: Path, first: str, second: str) -> None:
    """Exchange two categories' indices in the frozen vocabulary (a re-implementation's typo)."""

    def change(model):
        for node in model.graph.node:
            if node.op_type != "LabelEncoder":
                continue
            for attribute in node.attribute:
                if attribute.name == "keys_strings":
                    keys = [k.decode() for k in attribute.strings]
                    if first in keys and second in keys:
                        i, j = keys.index(first), keys.index(second)
                        keys[i], keys[j] = keys[j], keys[i]
                        del attribute.strings[:]
                        attribute.strings.extend(k.encode() for k in keys)
                        return
        raise AssertionError(f"no vocabulary holds {first!r} and {second!r}")

    edit_preprocess(bundle, change)


# --- defects applied to a bundle --------------------------------------------------------------------


def replace_pipeline(bundle: Path, other: Path) -> None:
    """The served graph swapped for another model's (same inputs and outputs), re-hashed."""
    for graph in ("pipeline.onnx", "model.onnx"):
        shutil.copyfile(other / graph, bundle / graph)
    rehash(bundle)


def scale_output(bundle: Path, factor: float) -> None:
    """Multiply the pipeline's (and the model's) first output by ``factor``, re-hashed."""
    for graph_file in ("pipeline.onnx", "model.onnx"):
        model = onnx.load(str(bundle / graph_file))
        output = model.graph.output[0].name
        producer = next(node for node in model.graph.node if output in node.output)
        producer.output[list(producer.output).index(output)] = output + "_unscaled"
        model.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "defect_factor"))
        model.graph.node.append(helper.make_node("Mul", [output + "_unscaled", "defect_factor"], [output]))
        onnx.save(model, str(bundle / graph_file))
    rehash(bundle)


@dataclass
class Case:
    """One defect or benign case: ``command`` is the CLI arguments (after the bundle) or "diff"."""

    name: str
    bundle: Path
    defect: bool
    command: tuple[str, ...] = ("check",)
    other: Path | None = None  # diff's B


def build_cases(work: Path) -> list[Case]:
    import paritybundle

    work.mkdir(parents=True, exist_ok=True)
    tiny_a = paritybundle.export(TinyLogits(0), work / "tiny-a", reference_inputs=tiny_images(), name="tiny").path
    tiny_b = paritybundle.export(TinyLogits(1), work / "tiny-b", reference_inputs=tiny_images(), name="tiny").path
    tiny_again = paritybundle.export(TinyLogits(0), work / "tiny-a2", reference_inputs=tiny_images(), name="tiny").path
    swapped = copy_bundle(tiny_a, work / "tiny-swapped")
    replace_pipeline(swapped, tiny_b)

    rare = paritybundle.export(RareEvent(), work / "rare", reference_inputs=rare_inputs(), name="rare").path
    shifted = copy_bundle(rare, work / "rare-x1.2")
    scale_output(shifted, 1.2)

    region = export_region(work / "region")
    region_swapped = copy_bundle(region, work / "region-swapped")
    swap_categories(region_swapped, "island", "polar")

    digits = _digits(work)
    noisy = copy_bundle(digits, work / "digits-noise")
    perturb_weights(noisy, relative_noise=0.001)
    fp16 = copy_bundle(digits, work / "digits-fp16")
    round_weights_to_fp16(fp16)

    return [
        Case("tiny logits, another seed's graph (check)", swapped, True),
        Case("tiny logits, another seed (diff)", tiny_a, True, ("diff",), tiny_b),
        Case("rare-event scorer x1.2", shifted, True),
        Case("two rare categories swapped, never in the caller's rows", region_swapped, True),
        Case("weights + 0.1% noise", noisy, True),
        Case("weights rounded to fp16", fp16, True),
        Case("tiny logits untouched", tiny_a, False),
        Case("rare-event scorer untouched", rare, False),
        Case("rare categories untouched", region, False),
        Case("digits untouched", digits, False),
        Case("digits, --threads 1", digits, False, ("check", "--threads", "1")),
        Case("digits, --optimization disable", digits, False, ("check", "--optimization", "disable")),
        Case(
            "region, --threads 1 --optimization disable",
            region,
            False,
            ("check", "--threads", "1", "--optimization", "disable"),
        ),
        Case("two exports of the same model (diff)", tiny_a, False, ("diff",), tiny_again),
    ]


def _digits(work: Path) -> Path:
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("digits_train", root / "examples" / "digits" / "train.py")
    assert spec is not None and spec.loader is not None
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    from paritybundle.training import export_spec

    return export_spec(train.make_spec(epochs=2), work / "digits").path


def margin(report) -> float:
    """The worst element's share of its tolerance over a check's (or a diff's) outputs (> 1 fails)."""
    comparisons = report.outputs if hasattr(report, "outputs") else [c for run in report.behaviour for c in run.outputs]
    return max((c.stats.max_tolerance_ratio for c in comparisons if c.stats is not None), default=float("nan"))


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text())
