"""Tabular example: scikit-learn's bundled wine data (no download), raw columns in, class scores out.

    bundle export examples/wine/train.py:make_spec -o artifacts/wine
    bundle check artifacts/wine

Serving takes the RAW columns, as a caller would send them: 13 float32 measurements
(``magnesium`` with missing values, NaN) and one category string, ``color_band``
(``pale``/``medium``/``deep``), derived from ``color_intensity`` so the example has a
real categorical column. The preprocessing is fitted on the training split only and
frozen into ``preprocess.onnx``; the model (a small MLP) reads its output, ``features``.

The missing ``magnesium`` values are simulated (about 10% of rows, fixed seed): the
wine data has none, and imputation is exactly the kind of step serving re-implements.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import torch
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split

from paritybundle import ExportSpec
from paritybundle import preprocess as pp

SEED = 0
EPOCHS = 200
SKEWED = ("malic_acid", "proline")  # long right tails: log1p before standardizing


def load_columns() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Train/test splits as mappings column name -> raw values, and their labels."""
    wine = load_wine()
    x, y = wine.data.astype(np.float32), wine.target.astype(np.int64)
    names = [n.replace("/", "_") for n in wine.feature_names]
    rng = np.random.default_rng(SEED)
    columns = {name: x[:, k].copy() for k, name in enumerate(names)}
    columns["magnesium"][rng.random(len(x)) < 0.10] = np.nan
    # A categorical column derived from the data: colour intensity in three bands.
    bands = np.quantile(x[:, names.index("color_intensity")], [1 / 3, 2 / 3])
    columns["color_band"] = np.array(["pale", "medium", "deep"])[np.searchsorted(bands, columns["color_intensity"])]
    rows_train, rows_test = train_test_split(np.arange(len(y)), test_size=0.3, random_state=SEED, stratify=y)
    train = {name: values[rows_train] for name, values in columns.items()}
    test = {name: values[rows_test] for name, values in columns.items()}
    return train, test, y[rows_train], y[rows_test]


def make_preprocessing(train: dict[str, np.ndarray]) -> pp.Columns:
    steps: dict[str, list[pp.Step]] = {}
    for name in train:
        if name == "color_band":
            steps[name] = [pp.OneHot()]
        elif name == "magnesium":
            steps[name] = [pp.Impute("median"), pp.Clip(quantiles=(0.01, 0.99)), pp.Standardize()]
        elif name in SKEWED:
            steps[name] = [pp.Log1p(), pp.Standardize()]
        else:
            steps[name] = [pp.Standardize()]
    return pp.Columns(steps, output="features").fit(train)


class WineMLP(torch.nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(features, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def train(features: np.ndarray, labels: np.ndarray, epochs: int = EPOCHS) -> WineMLP:
    torch.manual_seed(SEED)
    model = WineMLP(features.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss()
    xs, ys = torch.from_numpy(features), torch.from_numpy(labels)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss_fn(model(xs), ys).backward()
        optimizer.step()
    return model.eval()


def make_spec(epochs: int = EPOCHS) -> ExportSpec:
    """The export spec `bundle export examples/wine/train.py:make_spec` uses."""
    train_columns, test_columns, y_train, y_test = load_columns()
    preprocessing = make_preprocessing(train_columns)
    model = train(preprocessing.transform(train_columns), y_train, epochs)
    with torch.no_grad():
        predicted = model(torch.from_numpy(preprocessing.transform(test_columns))).argmax(dim=1).numpy()
    return ExportSpec(
        model=model,
        preprocess=preprocessing,
        reference_inputs=test_columns,  # raw columns, as callers send them
        output_names=["scores"],
        name="wine",
        version="1",
        params={"epochs": epochs, "seed": SEED, "hidden": 32, "skewed_log1p": list(SKEWED)},
        metrics={"test_accuracy": float((predicted == y_test).mean())},
        data_hashes={
            "sklearn_wine_train": hashlib.sha256(
                b"".join(np.ascontiguousarray(v).tobytes() for v in train_columns.values())
            ).hexdigest()
        },
        source_path=__file__,
    )


if __name__ == "__main__":
    from paritybundle.training import export_spec

    target = sys.argv[1] if len(sys.argv) > 1 else "artifacts/wine"
    result = export_spec(make_spec(), target, force=True)
    print(f"wrote {result.path} (test accuracy {result.manifest.provenance.metrics['test_accuracy']:.3f})")
