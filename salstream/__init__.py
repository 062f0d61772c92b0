"""salstream: real-time audio-visual saliency (DiffSal) for live video, published over ZeroMQ."""
__version__ = "0.2.0"
