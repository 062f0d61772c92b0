"""GPU engines against FP32 PyTorch. Skipped where there is no CUDA device (or runtime)."""
from __future__ import annotations

import pytest
import torch

from salstream.artifacts.graphs import example_noise, example_window  # noqa: E402
from salstream.diffsal.config import MODES  # noqa: E402
from salstream.diffsal.inference import predict_window  # noqa: E402
from salstream.export.parity import map_cc  # noqa: E402
from tests.support.tiny_models import tiny_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

MIN_CC = 0.99


def _real_or_tiny(profile: str):
    if profile == "tiny":
        return tiny_model(True)
    from salstream.diffsal import create_model
    return create_model(profile)


def _compare(engine, model, batch: int = 2, steps: int = 4) -> dict[str, float]:
    video, audio = example_window(model.config, batch, seed=3)
    noise = example_noise(model.config, batch, seed=4)
    out = {}
    for mode in MODES:
        ref = predict_window(model, video, audio, mode, steps, noise=noise)
        got = predict_window(engine, video, audio, mode, steps, noise=noise.cuda()).cpu()
        assert got.shape == ref.shape and torch.isfinite(got).all()
        out[mode] = map_cc(got, ref)
    return out


@pytest.mark.parametrize("profile", ["tiny", "lite"])
@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_torch_cuda_fp16_maps_match_fp32(profile, cuda_graphs):
    from salstream.engines import create_engine
    model = _real_or_tiny(profile)
    engine = create_engine("torch-cuda", model=model, cuda_graphs=cuda_graphs)
    ccs = _compare(engine, model)
    assert min(ccs.values()) >= MIN_CC, ccs
    if cuda_graphs:
        assert engine.describe()["captured"] == len(MODES)  # one capture per mode, replayed for every step
        # the replayed graph gives the same map on a second window of the same shape
        assert min(_compare(engine, model).values()) >= MIN_CC


def test_ort_cuda_parity_when_installed(tmp_path):
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu not installed")
    from salstream.runtime import make_engine
    model = tiny_model(True)
    engine = make_engine("ort-cuda", model, cache_root=tmp_path)
    assert min(_compare(engine, model).values()) >= MIN_CC


def test_tensorrt_parity_when_installed():
    pytest.importorskip("torch_tensorrt")
    from salstream.engines import create_engine
    model = tiny_model(True)
    engine = create_engine("tensorrt", model=model)
    assert min(_compare(engine, model).values()) >= MIN_CC
