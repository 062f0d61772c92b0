"""`salstream convert-official`: official .pth (DDP, wrapped) -> salstream safetensors."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from salstream.cli import main as cli_main
from salstream.diffsal.checkpoint import load_state, read_metadata
from salstream.diffsal.convert import AUDIO_PREFIXES, convert_official
from salstream.errors import CheckpointError

KEYS: dict[str, list[int]] = json.loads(
    (Path(__file__).parent / "data" / "official_keys.json").read_text())


def _cheap(shape) -> torch.Tensor:
    # One stored element broadcast to the shape: tiny files for the failure cases.
    if not shape:
        return torch.tensor(3, dtype=torch.int64)
    return torch.full((1,), 0.5).expand(*shape)


def _random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in KEYS.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(int(torch.randint(0, 10**6, (1,), generator=g)), dtype=torch.int64)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(shape, generator=g)
    return state


def _official_file(path: Path, state: dict[str, torch.Tensor], wrapped: bool = True) -> Path:
    ddp = {"module." + k: v for k, v in state.items()}
    obj = ddp
    if wrapped:
        first = next(iter(ddp.values()))
        obj = {"state_dict": ddp, "epoch": 3, "step": 12345,
               "optim_dict": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros_like(first)}},
                              "param_groups": [{"lr": 1e-4, "params": [0]}]}}
    torch.save(obj, path)
    return path


def test_official_keys_fixture_matches_the_spec():
    assert len(KEYS) == 658
    params = sum(math.prod(s) for k, s in KEYS.items()
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert params == 144_813_002


def test_converts_a_wrapped_ddp_checkpoint_exactly(tmp_path):
    state = _random_state()
    src = _official_file(tmp_path / "best.pth", state)
    dst = tmp_path / "full.safetensors"
    summary = convert_official(src, dst, log=None)
    assert summary["tensors"] == 658 and not summary["video_only"]
    meta = read_metadata(dst)
    assert meta["profile"] == "full" and meta["source"] == "best.pth"
    cfg, converted = load_state(dst)
    assert cfg.profile == "full" and cfg.input_size == (224, 384)
    assert set(converted) == set(KEYS)
    for k, v in state.items():
        assert converted[k].dtype == v.dtype, k
        assert torch.equal(converted[k], v), k
    # and it loads strictly into the model
    from salstream.diffsal.models.full import FullDiffSal
    with torch.device("meta"):
        model = FullDiffSal(cfg)
    model.load_state_dict(converted, strict=True, assign=True)
    assert torch.equal(model.decoder_net.invpt_decoder.mid_stages[1].blocks[0].align_conv.weight,
                       state["decoder_net.invpt_decoder.mid_stages.1.blocks.0.align_conv.weight"])


def test_bare_state_dict_is_accepted_through_the_cli(tmp_path, capsys):
    state = {k: _cheap(s) for k, s in KEYS.items()}
    src = _official_file(tmp_path / "bare.pth", state, wrapped=False)
    dst = tmp_path / "bare.safetensors"
    assert cli_main(["convert-official", str(src), str(dst)]) == 0
    assert "converted 658 tensors" in capsys.readouterr().out
    _, converted = load_state(dst)
    assert torch.equal(converted["decoder_net.logits.linear_pred.bias"], torch.tensor([0.5]))


@pytest.mark.parametrize("defect", ["extra", "missing", "shape"])
def test_mismatches_fail_naming_each_tensor(tmp_path, defect, capsys):
    state = {k: _cheap(s) for k, s in KEYS.items()}
    if defect == "extra":
        state["decoder_net.head_extra.weight"] = _cheap([7, 3])
        expect = ["no place", "decoder_net.head_extra.weight (7, 3)"]
    elif defect == "missing":
        del state["decoder_net.invpt_decoder.mid_stages.2.blocks.0.attn.proj_k.bias"]
        expect = ["missing", "decoder_net.invpt_decoder.mid_stages.2.blocks.0.attn.proj_k.bias (192,)"]
    else:
        state["visual_net.blocks.0.attn.rel_pos_h"] = _cheap([55, 96])
        expect = ["wrong shape", "visual_net.blocks.0.attn.rel_pos_h: file (55, 96), model (111, 96)"]
    src = _official_file(tmp_path / "bad.pth", state)
    dst = tmp_path / "bad.safetensors"
    with pytest.raises(CheckpointError) as err:
        convert_official(src, dst, log=None)
    for text in expect:
        assert text in str(err.value)
    assert not dst.exists()
    # the CLI turns it into an error message, not a traceback
    assert cli_main(["convert-official", str(src), str(dst)]) == 2
    assert expect[1] in capsys.readouterr().err


def test_video_only_dhf1k_checkpoint_needs_the_flag_and_keeps_initial_audio(tmp_path):
    state = {k: _cheap(s) for k, s in KEYS.items() if not k.startswith(AUDIO_PREFIXES)}
    assert len(state) == 658 - 42  # 12 + 6 VGGish, 13 + 7 audio transformer/embedding, 4 fc
    assert any(k.endswith("align_conv.weight") for k in state)
    src = _official_file(tmp_path / "dhf1k.pth", state)
    dst = tmp_path / "dhf1k.safetensors"
    with pytest.raises(CheckpointError, match="--allow-missing-audio"):
        convert_official(src, dst, log=None)
    messages: list[str] = []
    summary = convert_official(src, dst, allow_missing_audio=True, log=messages.append)
    assert summary["video_only"] and summary["filled_audio_tensors"] == 42
    assert any("video-only" in m for m in messages)
    assert read_metadata(dst)["audio_weights"].startswith("initialised")
    _, converted = load_state(dst)
    assert set(converted) == set(KEYS)
    assert torch.equal(converted["visual_net.norm3.weight"], torch.full((768,), 0.5))
    vggish = converted["audio_net.features.0.weight"]
    assert vggish.shape == (64, 1, 3, 3) and vggish.std() > 0   # initialised, not the 0.5 fill


def test_unreadable_and_unsafe_files_fail_clearly(tmp_path):
    trunc = tmp_path / "trunc.pth"
    _official_file(tmp_path / "ok.pth", {k: _cheap(s) for k, s in KEYS.items()})
    trunc.write_bytes((tmp_path / "ok.pth").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="trunc.pth"):
        convert_official(trunc, tmp_path / "x.safetensors", log=None)

    # arbitrary pickled objects (here a training script's argparse namespace) are refused
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "args": argparse.Namespace(lr=1e-4)}, unsafe)
    with pytest.raises(CheckpointError, match="safe loader"):
        convert_official(unsafe, tmp_path / "y.safetensors", log=None)
    with pytest.raises(CheckpointError, match="no such file"):
        convert_official(tmp_path / "absent.pth", tmp_path / "z.safetensors", log=None)
