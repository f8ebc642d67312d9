"""Preprocessing fitted in research and frozen into ``preprocess.onnx``.

``Pipeline`` (one input) and ``Columns`` (named inputs of mixed types) hold the
steps in :mod:`.tabular` and :mod:`.image` (conventions in :mod:`.steps`): what each step does with NaN, unseen
categories and image layouts. A fitted scikit-learn transformer or a
``torch.nn.Module`` is accepted by ``export(preprocess=...)`` as well.
"""

from .image import ChannelOrder, Normalize, Resize, Scale, ToFloatCHW, resize_weights
from .pipeline import Columns, Pipeline, Preprocessor
from .steps import Step
from .tabular import Clip, Impute, Index, Log1p, MinMaxScale, OneHot, Standardize

__all__ = [
    "ChannelOrder",
    "Clip",
    "Columns",
    "Impute",
    "Index",
    "Log1p",
    "MinMaxScale",
    "Normalize",
    "OneHot",
    "Pipeline",
    "Preprocessor",
    "Resize",
    "Scale",
    "Standardize",
    "Step",
    "ToFloatCHW",
    "resize_weights",
]
