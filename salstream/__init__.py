"""salstream: real-time audio-visual saliency (DiffSal) for live video, published over ZeroMQ.

``from salstream import Saliency`` is the Python API (:mod:`salstream.api`); it loads on
first use, so importing ``salstream`` stays light (the wire client needs only pyzmq and numpy).
"""
from typing import Any

__version__ = "0.2.0"

__all__ = ["Saliency", "Prediction", "Predictions", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Saliency", "Prediction", "Predictions"):
        from salstream import api
        return getattr(api, name)
    raise AttributeError(f"module 'salstream' has no attribute {name!r}")
