"""alfm: active learning on foundation-model features."""

__version__ = "0.1.0"
