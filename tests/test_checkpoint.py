"""Checkpoint round trip and the clear errors for unusable files (on a small registered profile)."""
import pytest
import torch
from torch import nn

from salstream.diffsal.checkpoint import file_sha256, load_model, load_state, read_metadata, save_checkpoint
from salstream.diffsal.config import ModelConfig
from salstream.diffsal.models.base import SaliencyModel
from salstream.diffsal.registry import register_profile
from salstream.errors import CheckpointError


class _Tiny(SaliencyModel):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.conv = nn.Conv2d(1, cfg.arch.get("width", 4), 3, padding=1)
        self.bn = nn.BatchNorm2d(cfg.arch.get("width", 4))


def _tiny_config():
    return ModelConfig(profile="tiny-ckpt-test", input_size=(32, 32), map_size=(32, 32), arch={"width": 4})


def _other_config():
    return ModelConfig(profile="other-ckpt-test", input_size=(32, 32), map_size=(32, 32), arch={"width": 4})


register_profile("tiny-ckpt-test", _tiny_config)(_Tiny)
register_profile("other-ckpt-test", _other_config)(_Tiny)


@pytest.fixture
def saved(tmp_path):
    model = _Tiny(_tiny_config())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        model.bn.running_mean.normal_()
    path = save_checkpoint(model, tmp_path / "m.safetensors", metadata={"source": "unit test", "epoch": 3})
    return model, path


def test_round_trip_keeps_weights_buffers_and_config(saved):
    model, path = saved
    loaded = load_model(path)
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    meta = read_metadata(path)
    assert meta["profile"] == "tiny-ckpt-test" and meta["source"] == "unit test" and meta["epoch"] == "3"
    assert not loaded.training
    assert len(file_sha256(path)) == 64


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "nope.safetensors")


def test_truncated_file_names_file_and_cause(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors.*(truncated|corrupt)"):
        load_model(bad)


def test_garbage_file(tmp_path):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_state(bad)


def test_wrong_profile_is_named(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="expected profile 'lite', found 'tiny-ckpt-test'"):
        load_model(path, profile="lite")


def test_shape_mismatch_lists_the_tensors(tmp_path):
    cfg = _tiny_config()
    cfg.arch = {"width": 8}
    model = _Tiny(cfg)
    path = save_checkpoint(model, tmp_path / "w8.safetensors")
    # Rewrite the config to claim width 4: the tensors no longer fit.
    from safetensors.torch import load_file, save_file
    meta = read_metadata(path)
    save_file(load_file(str(path)), str(path), metadata={**meta, "config": _tiny_config().to_json()})
    with pytest.raises(CheckpointError, match=r"wrong shape \(e\.g\. conv\.weight \(8, 1, 3, 3\)"):
        load_model(path)


def test_plain_safetensors_without_metadata(tmp_path):
    from safetensors.torch import save_file
    p = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(p))
    with pytest.raises(CheckpointError, match="without salstream metadata"):
        load_model(p)
