"""Train a small CNN on scikit-learn's bundled digits (no download) and describe its export.

    bundle export examples/digits/train.py:make_spec -o artifacts/digits
    bundle check artifacts/digits

or from Python: ``python examples/digits/train.py artifacts/digits``.

The model takes the raw 8x8 pixel values (0..16) as a caller would send them, as a
[batch, 64] float32 array, and returns class logits [batch, 10]. It has BatchNorm and
Dropout on purpose: both behave differently in training mode, so the example hands export its model in eval mode.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from paritybundle import ExportSpec

SEED = 0
EPOCHS = 30


class DigitsCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, kernel_size=3, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, kernel_size=3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
        )
        self.head = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Dropout(0.25),
            torch.nn.Linear(32 * 4 * 4, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 10),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # Scaling lives inside the model, so callers send raw pixel values.
        x = (pixels / 16.0).reshape(-1, 1, 8, 8)
        return self.head(self.features(x))


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)


def train(x_train: np.ndarray, y_train: np.ndarray, epochs: int = EPOCHS) -> DigitsCNN:
    torch.manual_seed(SEED)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss_fn(model(xs[batch]), ys[batch]).backward()
            optimizer.step()
    # Done training: eval mode, as research evaluates it (dropout off, batch-norm's running statistics).
    # Export would switch a model left in training mode itself, with a warning; the example leaves none.
    return model.eval()


def accuracy(model: DigitsCNN, x: np.ndarray, y: np.ndarray) -> float:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    model.train(was_training)
    return float((predicted == y).mean())


def make_spec(epochs: int = EPOCHS) -> ExportSpec:
    """The export spec `bundle export examples/digits/train.py:make_spec` uses."""
    x_train, x_test, y_train, y_test = load_data()
    model = train(x_train, y_train, epochs)
    return ExportSpec(
        model=model,
        reference_inputs={"pixels": x_test},
        output_names=["logits"],
        name="digits",
        version="1",
        params={"epochs": epochs, "seed": SEED, "lr": 3e-3, "architecture": "conv16-bn-conv32-pool-fc64"},
        metrics={"test_accuracy": accuracy(model, x_test, y_test)},
        data_hashes={"sklearn_digits": hashlib.sha256(np.ascontiguousarray(x_train).tobytes()).hexdigest()},
        source_path=__file__,
    )


if __name__ == "__main__":
    from paritybundle.training import export_spec

    target = sys.argv[1] if len(sys.argv) > 1 else "artifacts/digits"
    result = export_spec(make_spec(), target, force=True)
    print(f"wrote {result.path} (test accuracy {result.manifest.provenance.metrics['test_accuracy']:.3f})")
