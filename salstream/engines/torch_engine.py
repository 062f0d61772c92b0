"""Eager PyTorch engine (the reference every other engine is compared against)."""
from __future__ import annotations

from typing import Optional

import torch

from salstream.engines.base import Engine, register_engine


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str = "cpu", threads: Optional[int] = None):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config

    def _to(self, x):
        if x is None:
            return None
        if isinstance(x, torch.Tensor):
            return x.to(self.device, non_blocking=True)
        return tuple(self._to(v) for v in x)

    @torch.inference_mode()
    def encode_video(self, video):
        return self.model.encode_video(self._to(video))

    @torch.inference_mode()
    def encode_audio(self, audio):
        return self.model.encode_audio(self._to(audio))

    @torch.inference_mode()
    def denoise(self, x_t, t, video_feats, audio_feats):
        return self.model.denoise(self._to(x_t), self._to(t), self._to(video_feats), self._to(audio_feats))


def _resolve_model(model, checkpoint):
    if model is not None:
        return model
    if checkpoint is None:
        raise ValueError("an engine needs a model or a checkpoint")
    from salstream.diffsal.checkpoint import load_model
    return load_model(checkpoint)


@register_engine("torch")
def _make_torch(model=None, checkpoint=None, threads=None, **_):
    return TorchEngine(_resolve_model(model, checkpoint), "cpu", threads)
