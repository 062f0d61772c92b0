"""Nothing we read runs code, nothing we write leaks a password, nothing a stranger sends sizes our memory."""
from __future__ import annotations

import json
import logging
import os
import struct
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import zmq

from salstream.cli import main
from salstream.diffsal.checkpoint import load_model, save_checkpoint
from salstream.errors import CheckpointError, SalstreamError
from salstream.redact import redact
from salstream.streamer.live.sources.pyav import PyAVSource
from salstream.streamer.live.units import StreamEvent
from salstream.streamer.wire import format as wire
from salstream.streamer.wire.publisher import Publisher
from salstream.streamer.wire.subscriber import Subscriber
from tests.support.rtsp import RtspTestServer, free_port, system_python
from tests.support.tiny_models import tiny_model

bad_input = pytest.mark.bad_input
SECRET = "hunter2-s3cret"


# ------------------------------------------------------------------------------ no code from files
class _RunsCode:
    """Unpickling this calls os.mkdir(marker): proof that loading ran code from the file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@bad_input("security", "`train --resume` state that would run code when unpickled",
           "refused before anything in it runs (tensors and plain values only); one-line error")
def test_resume_never_runs_code_from_the_training_state(tmp_path):
    from salstream.diffsal.train import load_train_state
    marker = tmp_path / "code-ran"
    state = tmp_path / "train_state.pt"
    torch.save({"optimizer": _RunsCode(str(marker)), "scheduler": {}, "generator": torch.zeros(1),
                "py_rng": (3, (), None), "epoch": 1}, state)
    with pytest.raises(SalstreamError, match="--resume: .*not a training state salstream wrote"):
        load_train_state(state)
    assert not marker.exists()
    # What train() itself saves still loads (tensors, plain values, the scheduler's Counter).
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [1, 2])
    model(torch.randn(1, 2)).sum().backward()
    opt.step()
    import random
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "generator": torch.Generator().get_state(), "py_rng": random.Random(0).getstate(), "epoch": 1,
                "train_seconds": 1.0, "best": None}, state)
    assert load_train_state(state)["epoch"] == 1


def test_no_unsafe_deserialisation_anywhere_in_the_package():
    """Every torch.load passes weights_only=True, every np.load allow_pickle=False; no pickle/yaml.load."""
    import re
    root = Path(__file__).resolve().parents[1] / "salstream"
    offenders = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        for name, safe in (("torch.load(", "weights_only=True"), ("np.load(", "allow_pickle=False")):
            for m in re.finditer(re.escape(name), text):
                call = text[m.start():m.start() + 160].split("\n\n")[0]
                if safe not in call:
                    offenders.append(f"{path.name}: {call.splitlines()[0]}")
        if re.search(r"pickle\.loads?\(|yaml\.load\(|shell=True", text):
            offenders.append(f"{path.name}: pickle/yaml.load/shell=True")
    assert offenders == []


# ------------------------------------------------------------------------------ checkpoints
def _rewrite_metadata(src: Path, dst: Path, **config_changes) -> Path:
    """A copy of a safetensors file whose stored config differs (the tensors stay as they are)."""
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    config = json.loads(header["__metadata__"]["config"])
    for key, value in config_changes.items():
        if key == "arch":
            config["arch"].update(value)
        else:
            config[key] = value
    header["__metadata__"]["config"] = json.dumps(config)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    dst.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])
    return dst


@bad_input("checkpoint", "config metadata out of range (frames 10⁹, 10⁶-pixel maps, NaN, wrong types)",
           "one-line error naming the field, before any model is built")
@pytest.mark.parametrize("change, field", [
    ({"frames": 10 ** 9}, "frames"),
    ({"map_size": [1_000_000, 1_000_000]}, "map_size"),
    ({"input_size": "big"}, "input_size"),
    ({"default_steps": -3}, "default_steps"),
    ({"arch": {"channels": [1e300, 64, 32]}}, r"arch\.channels\[0\]"),
])
def test_checkpoint_config_out_of_range_is_one_error(tmp_path, change, field):
    src = save_checkpoint(tiny_model(True), tmp_path / "tiny.safetensors")
    bad = _rewrite_metadata(src, tmp_path / "bad.safetensors", **change)
    with pytest.raises(CheckpointError, match=f"unusable config metadata.*{field}"):
        load_model(bad)


@bad_input("checkpoint", "config metadata that sizes a far larger model than the tensors in the file",
           "refused after a size check on the meta device (nothing allocated); one-line error, exit 2")
def test_checkpoint_config_that_would_allocate_gigabytes_is_refused_without_allocating(small_checkpoint, tmp_path,
                                                                                         capsys):
    # 64× wider UNet stages: building this for real would take tens of GB.
    bad = _rewrite_metadata(Path(small_checkpoint), tmp_path / "wide.safetensors",
                            arch={"channels": [8192, 4096, 2048]})
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="does not fit the lite model"):
        load_model(bad)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000   # KiB: well under 0.5 GB
    code = main(["run", "--checkpoint", str(bad), "--engine", "torch", "--source", "synthetic",
                 "--publish", "tcp://127.0.0.1:*", "--no-record", "--max-frames", "1", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not fit the lite model" in err[0]


# ------------------------------------------------------------------------------ credentials
def test_redact_covers_every_url_form():
    assert redact(f"rtsp://admin:{SECRET}@10.0.0.1:554/live") == "rtsp://admin:***@10.0.0.1:554/live"
    assert SECRET not in redact(f"[Errno 111] Connection refused: 'http://u:{SECRET}@h/x?token={SECRET}&a=1'")
    assert redact("rtsp://viewer@cam/live and http://h/a?b=1") == "rtsp://viewer@cam/live and http://h/a?b=1"


@bad_input("security", "a password in an rtsp:// or http:// URL that cannot be opened",
           "the one-line error and every log line show it as `user:***@`")
def test_password_never_appears_in_errors_or_logs(capsys, caplog):
    url = f"rtsp://admin:{SECRET}@127.0.0.1:{free_port()}/live"   # nothing listens there
    with caplog.at_level(logging.DEBUG, logger="salstream"):
        code = main(["run", "--source", url, "--publish", "tcp://127.0.0.1:*", "--no-record", "--engine", "torch"])
    err = capsys.readouterr().err
    assert code == 2 and "admin:***@127.0.0.1" in err
    assert SECRET not in err + caplog.text


@pytest.mark.skipif(system_python() is None, reason="needs GStreamer's RTSP server (scripts/install-system-deps)")
@bad_input("security", "a password in the URL of an RTSP stream that drops and fails to reconnect",
           "redacted in reconnect log lines, stream events (summaries, errors), gap reasons and every published header")
def test_password_never_appears_in_reconnect_logs_events_or_published_gaps(caplog):
    with RtspTestServer(audio=False, width=160, height=120) as server:
        url = server.url.replace("rtsp://", f"rtsp://admin:{SECRET}@")
        src = PyAVSource(url, reconnect_attempts=2, reconnect_delay=0.05, reconnect_max_delay=0.05,
                         open_timeout=1.0, read_timeout=1.0)
        events: list[StreamEvent] = []
        with caplog.at_level(logging.DEBUG, logger="salstream"):
            frames = 0
            for unit in src:
                if isinstance(unit, StreamEvent):
                    events.append(unit)
                else:
                    frames += 1
                    if frames == 5:
                        server.kill()       # the camera goes away for good: gap, reconnects, give up
        src.close()
    kinds = [e.kind for e in events]
    assert "gap" in kinds and "error" in kinds
    text = caplog.text + repr([e.detail for e in events]) + src.description
    assert "reconnect attempt" in caplog.text and SECRET not in text and "admin:***@" in text

    # The wire redacts gap reasons too (a reason quoting an FFmpeg error that names the URL).
    with Publisher("tcp://127.0.0.1:*") as pub, Subscriber(pub.endpoint) as sub:
        time.sleep(0.3)
        header = wire.MapHeader(stream="0", frame_index=1, pts=0.1, capture_time=0.0,
                                gaps=[{"from_pts": 0.0, "to_pts": 0.1, "reason": f"refused: '{url}'"}])
        deadline, msg = time.monotonic() + 5, None
        while msg is None and time.monotonic() < deadline:
            pub.publish_map(header, np.zeros((2, 2), np.float32))
            msg = sub.recv_map(timeout=0.1)
    assert msg is not None and SECRET not in json.dumps(msg.header.to_dict())
    assert "admin:***@" in msg.header.gaps[0]["reason"]


# ------------------------------------------------------------------------------ previews
def _bomb_jpeg(side: int = 30000) -> bytes:
    """A real tiny JPEG whose start-of-frame header is rewritten to claim side×side pixels."""
    ok, enc = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(enc.tobytes())
    i = 2
    while data[i + 1] not in (0xC0, 0xC2):
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    data[i + 5:i + 9] = side.to_bytes(2, "big") + side.to_bytes(2, "big")
    return bytes(data)


@bad_input("client", "a frame preview whose JPEG header claims 30000×30000 pixels (a decompression bomb)",
           "skipped and counted by the subscriber before decoding; `view`/`web` never decode it")
def test_preview_bomb_is_skipped_before_decoding():
    bomb = _bomb_jpeg()
    assert len(bomb) < 1000 and wire.jpeg_size(bomb) == (30000, 30000)
    msg = wire.FrameMessage("0", {"frame_index": 0, "pts": 0.0, "capture_time": 0.0}, bomb)
    with pytest.raises(wire.WireError, match="claims 30000×30000"):
        msg.image()
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Subscriber(f"tcp://127.0.0.1:{port}", frames=True) as sub:
            time.sleep(0.3)
            head = {"stream": "0", "frame_index": 0, "pts": 0.0, "capture_time": 0.0}
            raw.send_multipart(wire.encode_frame(head, bomb))
            raw.send_multipart(wire.encode_frame(dict(head, frame_index=1), cv2.imencode(".jpg", np.zeros((4, 4, 3), np.uint8))[1].tobytes()))
            got = sub.recv(timeout=5)
            assert isinstance(got, wire.FrameMessage) and got.frame_index == 1 and got.image().shape == (4, 4, 3)
            assert sub.bad_messages == 1 and "30000" in sub.last_error
    finally:
        raw.close(0)
