"""Maps to disk (`run --save-maps`), the JSON run summary, and the command line's small things."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from salstream import __version__
from salstream import cli as cli
from salstream.errors import SalstreamError
from salstream.streamer.live.pipeline import Pipeline, PipelineOptions
from salstream.streamer.live.sources.synthetic import SyntheticSource
from salstream.streamer.saved_maps import MapSaver, load_saved_maps, stream_dir_name
from salstream.streamer.wire import format as wire
from salstream.streamer.wire.subscriber import Subscriber

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("payload", ["float32", "uint8"])
def test_saved_maps_equal_the_published_maps_bit_for_bit(engine, tmp_path, payload):
    n = 24
    out = tmp_path / "maps"
    sources = [SyntheticSource(seed, stream_id=str(i), paced=False, max_frames=n, width=96, height=64)
               for i, seed in enumerate((1, 2))]
    opts = PipelineOptions(publish="tcp://127.0.0.1:*", paced=False, wait_subscriber=30, payload_dtype=payload)
    pipe = Pipeline(opts, engine, sources=sources, consumers=[MapSaver(out, png=True, chunk_maps=5)])
    th = threading.Thread(target=pipe.run)
    th.start()
    assert pipe.bound.wait(30)
    received: dict[str, list] = {"0": [], "1": []}
    with Subscriber(pipe.endpoint) as sub:
        while th.is_alive() or sub._sock.poll(0):
            m = sub.recv_map(timeout=0.5)
            if m is not None:
                received[m.stream].append(m)
    th.join(60)
    for sid, msgs in received.items():
        saved = load_saved_maps(out, sid)
        assert saved.complete and len(saved) == len(msgs) == n
        assert saved.maps.dtype == wire.PAYLOAD_DTYPES[payload]
        for i, m in enumerate(msgs):
            assert saved.maps[i].tobytes() == m.raw.tobytes()            # exactly the payload that went out
            assert (saved.frame_index[i], saved.pts[i], saved.seq[i]) == (m.frame_index, m.pts, m.header.seq)
            assert (saved.capture_time[i], saved.publish_time[i]) == (m.header.capture_time, m.header.publish_time)
            assert saved.mode[i] == m.header.mode
        headers = [json.loads(line) for line in (out / sid / "headers.jsonl").read_text().splitlines()]
        assert [h["frame_index"] for h in headers] == list(range(n)) and headers[0]["stream"] == sid
        pngs = sorted((out / sid / "png").glob("*.png"))
        assert [p.name for p in pngs] == [f"{i + 1:04d}.png" for i in range(n)]
        png = cv2.imread(str(pngs[3]), cv2.IMREAD_UNCHANGED)
        expected = np.frombuffer(wire.encode_map_payload(msgs[3].saliency, "uint8"), np.uint8).reshape(png.shape)
        assert png.dtype == np.uint8 and np.array_equal(png, expected)
        assert not (out / sid / "chunks").exists()
        with np.load(out / sid / "maps.npz", allow_pickle=False) as z:       # plain arrays, no pickles
            assert set(z.files) == {"maps", "frame_index", "pts", "capture_time", "publish_time", "seq", "mode"}


def test_saved_spreads_equal_the_published_ones_and_line_up_with_their_maps(engine, tmp_path):
    """--samples K: each map's spread (conf/<stream>) is saved beside it; with one map per chunk
    every spread lands in the chunk after its map's, and the join still lines them up."""
    n = 10
    out = tmp_path / "maps"
    source = SyntheticSource(3, stream_id="0", paced=False, max_frames=n, width=96, height=64)
    opts = PipelineOptions(publish="tcp://127.0.0.1:*", paced=False, wait_subscriber=30, samples=3,
                           payload_dtype="uint8")
    pipe = Pipeline(opts, engine, sources=[source], consumers=[MapSaver(out, chunk_maps=1)])
    th = threading.Thread(target=pipe.run)
    th.start()
    assert pipe.bound.wait(30)
    confs = {}
    with Subscriber(pipe.endpoint, kinds={"map", "conf"}) as sub:
        while th.is_alive() or sub._sock.poll(0):
            m = sub.recv(timeout=0.5)
            if isinstance(m, wire.ConfMessage):
                confs[m.header.seq] = m.spread
    th.join(60)
    saved = load_saved_maps(out, "0")
    assert saved.complete and len(saved) == n == len(confs)
    assert saved.maps.dtype == np.uint8 and saved.spread.dtype == np.float32
    assert saved.spread.shape == saved.maps.shape
    for i, seq in enumerate(saved.seq):
        assert saved.spread[i].tobytes() == confs[int(seq)].tobytes()
    assert float(saved.spread.max()) > 0
    with np.load(out / "0" / "maps.npz", allow_pickle=False) as z:
        assert "spread" in z.files and "spread_seq" not in z.files


def test_a_map_whose_spread_was_not_saved_gets_nan(tmp_path):
    saver = MapSaver(tmp_path / "maps", chunk_maps=2, chunk_seconds=60)
    saver.start()
    for i in range(4):
        saver.on_map(header(i), np.full((4, 6), i / 10, np.float32))
        if i != 2:
            saver.on_spread(header(i), np.full((4, 6), i / 100, np.float32))
    saver.close()
    saved = load_saved_maps(tmp_path / "maps", "cam")
    assert np.isnan(saved.spread[2]).all()
    assert [float(saved.spread[i, 0, 0]) for i in (0, 1, 3)] == pytest.approx([0.0, 0.01, 0.03])
    plain = MapSaver(tmp_path / "plain")
    plain.on_map(header(0), np.zeros((4, 6), np.float32))
    plain.close()
    assert load_saved_maps(tmp_path / "plain", "cam").spread is None    # no --samples: no spread array


def header(i: int) -> wire.MapHeader:
    return wire.MapHeader(stream="cam", frame_index=i, pts=i / 30, capture_time=100 + i / 30, seq=i, publish_time=101)


def test_a_killed_run_keeps_the_chunks_written_so_far(tmp_path):
    saver = MapSaver(tmp_path / "maps", chunk_maps=8, chunk_seconds=60)
    saver.start()
    maps = [np.full((4, 6), i / 20, np.float32) for i in range(20)]
    for i, m in enumerate(maps):
        saver.on_map(header(i), m)
    folder = tmp_path / "maps" / "cam"
    deadline = time.monotonic() + 30
    while len(list((folder / "chunks").glob("0*.npz"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    # What a reader finds if the process died now: the two full chunks, every header line.
    partial = load_saved_maps(tmp_path / "maps", "cam")
    assert not partial.complete and list(partial.frame_index) == list(range(16))
    assert np.array_equal(partial.maps, np.stack(maps[:16]))
    assert len((folder / "headers.jsonl").read_text().splitlines()) == 20
    saver.close()
    whole = load_saved_maps(tmp_path / "maps", "cam")
    assert whole.complete and np.array_equal(whole.maps, np.stack(maps)) and list(whole.seq) == list(range(20))
    assert saver.summary() == [f"maps saved: 20 in {tmp_path / 'maps'}/ (1 stream(s))"]


def test_save_maps_refuses_a_used_folder_and_escapes_stream_ids(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("old")
    with pytest.raises(SalstreamError, match="not an empty folder"):
        MapSaver(tmp_path / "used")
    assert stream_dir_name("0") == "0" and stream_dir_name("..") == "%2E." and stream_dir_name("a\\b c") == "a%5Cb%20c"


def test_run_saves_maps_and_writes_the_summary_json(small_checkpoint, tmp_path, capsys):
    maps, summary = tmp_path / "maps", tmp_path / "out" / "summary.json"
    code = cli.main(["run", "--source", "synthetic:2", "--as-fast-as-possible", "--max-frames", "12",
                     "--checkpoint", str(small_checkpoint), "--engine", "torch", "--threads", "1", "--no-record",
                     "--publish", "tcp://127.0.0.1:*", "--save-maps", str(maps), "--summary-json", str(summary),
                     "--log-level", "warning"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(summary.read_text())
    assert data["maps"] == 12 and data["per_stream"] == {"0": 12} and data["modes"] == {"av": 12}
    assert 0 < data["latency_ms"]["p50"] <= data["latency_ms"]["p95"] <= data["latency_ms"]["p99"]
    assert data["maps_per_second"] > 0 and data["stage_ms_median"]["denoise"] > 0
    assert any(n.startswith("maps saved: 12") for n in data["notes"]) and "maps saved: 12" in out
    assert len(load_saved_maps(maps)) == 12
    assert "salstream: " not in err                                # --log-level warning: no progress lines


def test_save_png_needs_save_maps(capsys):
    assert cli.main(["run", "--save-png", "--no-record", "--publish", "tcp://127.0.0.1:*"]) == 2
    assert "--save-maps DIR" in capsys.readouterr().err


def test_version_module_entry_and_logging_options_on_every_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"salstream {__version__}"
    r = subprocess.run([sys.executable, "-m", "salstream", "--version"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"salstream {__version__}"
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"run", "view", "web", "encode", "export", "train", "eval", "convert-official"} <= set(commands)
    for name in commands:
        if name == "bench":
            continue
        text = commands[name].format_help()
        assert "--verbose" in text and "--log-level" in text and "--quiet" in text, name
    assert parser.parse_args(["web", "-vv"]).verbose == 2 and parser.parse_args(["-v", "view"]).verbose == 1
    a = parser.parse_args(["--log-level", "DEBUG", "web"])
    assert a.log_level == "debug" and a.verbose == 0
