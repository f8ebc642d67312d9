"""Image example: scikit-learn's bundled digits as uint8 RGB images through the image steps.

    bundle export examples/digit_images/train.py:make_spec -o artifacts/digit-images
    bundle check artifacts/digit-images

Serving takes what a camera or an upload gives: uint8 images ``[batch, 8, 8, 3]``
(height, width, channel; RGB). The digits are drawn in orange (full red, 60% green,
no blue), so the channel order matters. The frozen preprocessing does what the
research code did: HWC uint8 -> float CHW, RGB -> BGR (the research loader used
OpenCV's order), scale to [0, 1], bilinear resize to 16x16 (half-pixel centres, no
antialias: see ``paritybundle.preprocess.Resize``), and per-channel normalization
with statistics fitted on the training images.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from paritybundle import ExportSpec
from paritybundle import preprocess as pp

SEED = 0
EPOCHS = 15
SIZE = (16, 16)
COLOUR = np.array([1.0, 0.6, 0.0])  # orange ink: red, some green, no blue


def load_images() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """uint8 RGB images [N, 8, 8, 3] and labels, split into train and test."""
    digits = load_digits()
    intensity = digits.images / 16.0  # 0..1
    images = np.clip(np.rint(intensity[..., None] * COLOUR * 255), 0, 255).astype(np.uint8)
    return train_test_split(
        images, digits.target.astype(np.int64), test_size=0.25, random_state=SEED, stratify=digits.target
    )


def make_preprocessing(train_images: np.ndarray) -> pp.Pipeline:
    return pp.Pipeline(
        [
            pp.ToFloatCHW(),
            pp.ChannelOrder("RGB", "BGR"),
            pp.Scale(1 / 255),
            pp.Resize(SIZE, interpolation="linear"),
            pp.Normalize(),
        ],
        input="image",
        output="pixels",
    ).fit(train_images)


class DigitNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, kernel_size=3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, kernel_size=3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(32 * 4 * 4, 10),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layers(pixels)


def train(pixels: np.ndarray, labels: np.ndarray, epochs: int = EPOCHS) -> DigitNet:
    torch.manual_seed(SEED)
    model = DigitNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    xs, ys = torch.from_numpy(pixels), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss_fn(model(xs[batch]), ys[batch]).backward()
            optimizer.step()
    return model.eval()


def make_spec(epochs: int = EPOCHS) -> ExportSpec:
    """The export spec `bundle export examples/digit_images/train.py:make_spec` uses."""
    x_train, x_test, y_train, y_test = load_images()
    preprocessing = make_preprocessing(x_train)
    model = train(preprocessing.transform(x_train), y_train, epochs)
    with torch.no_grad():
        predicted = model(torch.from_numpy(preprocessing.transform(x_test))).argmax(dim=1).numpy()
    return ExportSpec(
        model=model,
        preprocess=preprocessing,
        reference_inputs={"image": x_test},  # uint8 HWC images, as callers send them
        output_names=["logits"],
        name="digit-images",
        version="1",
        params={"epochs": epochs, "seed": SEED, "resize": list(SIZE), "channel_order": "BGR"},
        metrics={"test_accuracy": float((predicted == y_test).mean())},
        data_hashes={"sklearn_digits_rgb_train": hashlib.sha256(x_train.tobytes()).hexdigest()},
        source_path=__file__,
    )


if __name__ == "__main__":
    from paritybundle.training import export_spec

    target = sys.argv[1] if len(sys.argv) > 1 else "artifacts/digit-images"
    result = export_spec(make_spec(), target, force=True)
    print(f"wrote {result.path} (test accuracy {result.manifest.provenance.metrics['test_accuracy']:.3f})")
