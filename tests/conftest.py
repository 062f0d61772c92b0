"""Fixtures shared by the test modules, and the tiny test profile.

``tiny`` is registered as a real profile (``create_model("tiny")``) so tests of the
registry, checkpoints and export go through the same code paths as ``lite`` and ``full``
at sizes that export and run in well under a second.
"""
from __future__ import annotations

import pytest

from salstream.diffsal.checkpoint import save_checkpoint
from salstream.diffsal.registry import register_profile
from tests.support.pipeline import one_torch_thread, small_lite_engine
from tests.support.tiny_models import TinySaliency, tiny_config, tiny_model

register_profile("tiny", tiny_config)(TinySaliency)


@pytest.fixture(autouse=True, scope="session")
def _private_export_cache(tmp_path_factory):
    """Graphs exported during the tests go to a throw-away cache, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SALSTREAM_CACHE", str(tmp_path_factory.mktemp("salstream-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def engine():
    """The small lite engine, run with one torch thread for the whole test module."""
    with one_torch_thread():
        yield small_lite_engine()


@pytest.fixture(scope="module")
def small_checkpoint(engine, tmp_path_factory):
    """The small engine's weights as a checkpoint file (for the CLI and subprocesses)."""
    return save_checkpoint(engine.model, tmp_path_factory.mktemp("ckpt") / "small_lite.safetensors")


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory):
    """Both tiny variants (per-frame like lite, per-clip like full) exported once per test session."""
    from salstream.export.onnx_export import export_onnx
    out = {}
    for per_frame in (True, False):
        model = tiny_model(per_frame)
        d = tmp_path_factory.mktemp(f"onnx_{'frame' if per_frame else 'clip'}")
        export_onnx(model, d)
        out[per_frame] = (model, d)
    return out
