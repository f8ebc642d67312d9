"""``paritybundle.preprocess``: fit preprocessing in research, freeze it into the bundle.

The implementation lives on the training side (:mod:`paritybundle.training.preprocess`);
nothing here imports torch.
"""

from .training.preprocess import *  # noqa: F403
from .training.preprocess import __all__  # noqa: F401
