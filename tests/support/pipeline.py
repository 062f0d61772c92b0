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


class RunningPipeline:
    """A :class:`~salstream.streamer.live.pipeline.Pipeline` run in a thread until :meth:`stop` (or the
    ``with`` block ends); an error of the run is raised there."""

    def __init__(self, pipe, ready_timeout: float = 60.0):
        import threading
        self.pipe = pipe
        self.summary = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-pipeline", daemon=True)
        self._thread.start()
        if not pipe.ready.wait(ready_timeout) and self._error is None:
            raise TimeoutError("the pipeline did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            self.summary = self.pipe.run()
        except BaseException as exc:
            self._error = exc
            self.pipe.ready.set()

    @property
    def endpoint(self) -> str:
        return self.pipe.endpoint

    def stop(self, timeout: float = 60.0):
        self.pipe.stop()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the pipeline did not stop"
        if self._error is not None:
            raise self._error
        return self.summary

    def __enter__(self) -> "RunningPipeline":
        return self

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self.stop()
