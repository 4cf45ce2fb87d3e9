"""Built-in metrics (linear probe, k-NN, IS/FID/KID, reconstruction, sample judge) and feature networks.

Each config class's docstring is the metric's protocol; docs/evaluation.md collects them.
"""

from bifamily.hookspecs import hookimpl

from .generation import FidConfig
from .judge import JudgeConfig
from .networks import InceptionConfig, RandomConvConfig
from .reconstruction import ReconstructionConfig
from .representation import KnnConfig, LinearProbeConfig


@hookimpl
def bifamily_register_metrics(register):
    register("probe", LinearProbeConfig)
    register("knn", KnnConfig)
    register("fid", FidConfig)
    register("recon", ReconstructionConfig)
    register("judge", JudgeConfig)


@hookimpl
def bifamily_register_feature_networks(register):
    register("inception", InceptionConfig)
    register("random_conv", RandomConvConfig)
