"""bifamily: a PyTorch framework for the BiGAN family of models (BiGAN, ALI, BigBiGAN)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bifamily")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
