"""Shared pieces of the pipeline tests: a small real `lite` model and a deliberately slow engine.

The fixtures built from them (``engine``, ``small_checkpoint``) live in ``tests/conftest.py``.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from salstream.diffsal import create_model, default_config
from salstream.engines import create_engine


@contextmanager
def one_torch_thread():
    """Run with one intra-op thread, restoring the previous count afterwards.

    The models here are tiny: a second thread barely helps them, and on a busy 2-core
    machine two spinning OpenMP threads per process can be 10× slower than one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def small_lite_engine(seed: int = 0):
    """The real lite network (pretrained backbone, untrained UNet) at 64×96 input, 16×24 maps."""
    torch.manual_seed(seed)
    arch = dict(default_config("lite").arch, kv_kernels=[1, 2, 4])    # K/V pooling that tiles the small grids
    model = create_model("lite", input_size=(64, 96), map_size=(16, 24), arch=arch)
    return create_engine("torch", model=model)


class SlowEngine:
    """A real engine whose denoise is made slow on purpose (compute that falls behind)."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay = inner, delay
        self.config = inner.config
        self.name = "slow-" + inner.name
        self.batches: list[int] = []

    def encode_video(self, x):
        return self.inner.encode_video(x)

    def encode_audio(self, x):
        return self.inner.encode_audio(x)

    def denoise(self, x_t, t, v, a):
        self.batches.append(x_t.shape[0])
        time.sleep(self.delay)
        return self.inner.denoise(x_t, t, v, a)
