"""Saliency → QP-offset maps and FFmpeg regions of interest (streamer.guidance.roi), and their roi/ topic."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from salstream.errors import SalstreamError
from salstream.streamer.guidance.roi import (
    QP_RANGE,
    ROI_STRUCT,
    QpMap,
    QpMapper,
    Region,
    RoiConfig,
    RoiPublisher,
    regions_to_struct,
)
from salstream.streamer.wire import format as wire
from salstream.streamer.wire.format import RoiMessage, WireError


def _blob(h: int, w: int, cy: float, cx: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / sigma ** 2).astype(np.float32)


def _raster(regions: list[Region], rows: int, cols: int, block: int) -> np.ndarray:
    """Blocks each region covers, by libx264's rule (start = floor, end = ceil of the edges / block)."""
    grid = np.zeros((rows, cols), np.float64)
    hits = np.zeros((rows, cols), int)
    for r in regions:
        ys, ye = r.top // block, -(-r.bottom // block)
        xs, xe = r.left // block, -(-r.right // block)
        grid[ys:ye, xs:xe] = r.qp
        hits[ys:ye, xs:xe] += 1
    return grid, hits


def test_block_pooling_follows_the_map_and_covers_partial_blocks():
    # 200×100 frame with 16-px blocks: 13×7 blocks, the last column/row partial.
    cfg = RoiConfig(block_size=16, normalize=False, time_constant=0, max_step=0)
    m = QpMapper(200, 100, cfg)
    assert (m.rows, m.cols) == (7, 13)
    sal = np.zeros((100, 200), np.float32)
    sal[:32, :48] = 1.0                      # exactly the top-left 2×3 blocks
    sal[96:, 192:] = 1.0                     # the partial bottom-right corner block
    blocks = m.block_saliency(sal)
    assert blocks.shape == (7, 13)
    np.testing.assert_allclose(blocks[:2, :3], 1.0)
    assert blocks[6, 12] == pytest.approx(1.0)   # padded by edge values, not diluted by zeros
    assert blocks[2:6, 3:12].max() == 0.0
    # A map at another size (the model's) is resampled onto the frame first.
    small = np.zeros((25, 50), np.float32)
    small[:, 25:] = 1.0
    b2 = m.block_saliency(small)
    assert b2[:, :5].max() < 0.05 and b2[:, 8:].min() > 0.95


def test_offsets_span_the_configured_range_and_normalize():
    cfg = RoiConfig(block_size=16, salient_offset=-8, background_offset=4, time_constant=0, max_step=0)
    m = QpMapper(64, 32, cfg)
    sal = np.zeros((32, 64), np.float32)
    sal[:, :16] = 0.5                         # peak 0.5 → normalised to 1
    t = m.target(sal)
    np.testing.assert_allclose(t[:, 0], -8.0)
    np.testing.assert_allclose(t[:, 1:], 4.0)
    raw = QpMapper(64, 32, RoiConfig(block_size=16, salient_offset=-8, background_offset=4,
                                     normalize=False)).target(sal)
    np.testing.assert_allclose(raw[:, 0], -2.0)   # halfway between 4 and −8
    # gamma > 1 pushes mid saliency toward the background offset
    g = QpMapper(64, 32, RoiConfig(block_size=16, salient_offset=-8, background_offset=4, normalize=False,
                                   gamma=2.0)).target(sal)
    assert g[0, 0] > raw[0, 0]


def test_temporal_smoothing_bounds_flicker_and_converges():
    cfg = RoiConfig(block_size=16, salient_offset=-10, background_offset=6, time_constant=0.2, max_step=2.0)
    m = QpMapper(64, 64, cfg)
    a = np.zeros((64, 64), np.float32)
    a[:32] = 1.0
    b = a[::-1].copy()                        # the salient half jumps every frame
    prev = m.update(a, 0.0).offsets
    steps = []
    for i in range(1, 30):
        cur = m.update(a if i % 2 == 0 else b, i / 30).offsets
        steps.append(np.abs(cur - prev).max())
        prev = cur
    # Unsmoothed the offsets would jump 16 QP per frame; here at most max_step.
    assert max(steps) <= 2.0 + 1e-5
    # Under constant input the state reaches the target (within 0.05 QP after ~10 time constants).
    for i in range(30, 100):
        out = m.update(a, i / 30).offsets
    np.testing.assert_allclose(out, m.target(a), atol=0.05)


def test_smoothing_depends_on_elapsed_time_not_on_call_count():
    cfg = RoiConfig(block_size=16, time_constant=0.3, max_step=0)
    a = np.zeros((32, 32), np.float32)
    a[:16, :16] = 1.0
    b = np.zeros((32, 32), np.float32)
    b[16:, 16:] = 1.0
    m1, m2 = QpMapper(32, 32, cfg), QpMapper(32, 32, cfg)
    m1.update(a, 0.0)
    m2.update(a, 0.0)
    m1.update(b, 0.1)
    r1 = m1.update(b, 0.2).offsets
    r2 = m2.update(b, 0.2).offsets
    np.testing.assert_allclose(r1, r2, atol=1e-4)
    m1.reset()
    np.testing.assert_allclose(m1.update(b, 5.0).offsets, m1.target(b))  # no memory after reset


def test_regions_tile_exactly_the_nonzero_blocks_in_ffmpeg_semantics():
    cfg = RoiConfig(block_size=16, time_constant=0, max_step=0)
    w, h = 392, 232                            # not a multiple of 16: edge regions end at the frame edge
    m = QpMapper(w, h, cfg)
    sal = _blob(56, 98, 20, 30, 8) + 0.6 * _blob(56, 98, 40, 80, 5)
    qp = m.update(sal)
    regions = m.regions(qp)
    expected = np.clip(np.rint(qp.offsets), -QP_RANGE, QP_RANGE)
    grid, hits = _raster(regions, m.rows, m.cols, 16)
    assert hits.max() == 1, "regions must not overlap"
    np.testing.assert_array_equal(grid, expected)      # uncovered blocks are exactly the 0-offset ones
    assert len(regions) < m.rows * m.cols / 3          # merging keeps a smooth map compact
    for r in regions:
        assert 0 <= r.top < r.bottom <= h and 0 <= r.left < r.right <= w
        assert r.qoffset_den == QP_RANGE and r.qp == r.qoffset_num
        assert -1 <= r.qoffset <= 1 and r.qp != 0
    assert any(r.bottom == h for r in regions) and any(r.right == w for r in regions)
    # Salient blocks are the better-quality (negative) ones.
    top = max(regions, key=lambda r: -r.qp)
    assert top.qp < 0 and top.top <= 20 * 232 / 56 <= top.bottom + 16


def test_region_count_is_capped_by_coarser_rounding():
    rng = np.random.default_rng(0)
    qp = QpMap(rng.uniform(-10, 6, size=(14, 24)).astype(np.float32), 16, 384, 224)
    fine = qp.regions(1.0)
    capped = qp.regions(1.0, max_regions=40)
    assert len(fine) > 40 >= len(capped) > 0
    grid, hits = _raster(capped, 14, 24, 16)
    assert hits.max() == 1
    assert np.abs(grid - qp.offsets)[hits == 1].max() <= 8.5   # coarser, but still follows the map


def test_region_struct_matches_avregionofinterest_layout():
    regions = [Region(0, 32, 16, 64, -9), Region(32, 48, 0, 16, 4)]
    arr = regions_to_struct(regions, capacity=4)
    raw = arr.tobytes()
    assert ROI_STRUCT.itemsize == 28 and len(raw) == 4 * 28
    fields = np.frombuffer(raw, dtype="<i4").reshape(4, 7)
    np.testing.assert_array_equal(fields[0], [28, 0, 32, 16, 64, -9, 51])
    np.testing.assert_array_equal(fields[1], [28, 32, 48, 0, 16, 4, 51])
    # Unused slots: empty rectangles with a valid (non-zero) denominator and no offset.
    np.testing.assert_array_equal(fields[2], [28, 0, 0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="do not fit"):
        regions_to_struct(regions * 3, capacity=4)


@pytest.mark.parametrize("kwargs, needle", [
    ({"block_size": 10}, "multiple of 4"),
    ({"salient_offset": -60}, "±51"),
    ({"pooling": "median"}, "pooling"),
    ({"gamma": 0}, "gamma"),
    ({"max_regions": 0}, "max_regions"),
])
def test_bad_config_names_the_setting(kwargs, needle):
    with pytest.raises(SalstreamError, match=needle):
        RoiConfig(**kwargs)


def test_bad_maps_are_refused_clearly():
    m = QpMapper(64, 64)
    with pytest.raises(SalstreamError, match="2-D"):
        m.update(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(SalstreamError, match="NaN"):
        m.update(np.full((8, 8), np.nan, np.float32))


def _message(stream: str = "cam0"):
    m = QpMapper(100, 60, RoiConfig(block_size=16))
    qp = m.update(_blob(60, 100, 20, 40, 10), 0.5)
    regions = m.regions(qp)
    parts = wire.encode_roi({"stream": stream, "seq": 3, "frame_index": 15, "pts": 0.5, "capture_time": 1.0,
                             "publish_time": 1.1, "publish_wall": 2.0}, qp.offsets, qp.block_size,
                            (qp.height, qp.width), [r.as_list() for r in regions], QP_RANGE)
    return qp, regions, parts


def test_wire_round_trip():
    qp, regions, parts = _message()
    assert parts[0] == b"roi/cam0"
    header = json.loads(parts[1])
    assert header["kind"] == "roi" and header["version"] == 1 and header["shape"] == [4, 7]
    assert header["frame_size"] == [60, 100] and header["block_size"] == 16 and header["qp_range"] == 51
    msg = wire.decode(parts)
    assert isinstance(msg, RoiMessage) and msg.stream == "cam0" and msg.frame_index == 15
    back = QpMap.from_message(msg)
    np.testing.assert_array_equal(back.offsets, qp.offsets)
    assert (back.width, back.height, back.block_size) == (qp.width, qp.height, qp.block_size)
    assert [Region.from_list(r) for r in msg.regions] == regions


@pytest.mark.parametrize("mutate, needle", [
    (lambda p: [p[0], p[1], p[2][:-4]], "payload"),
    (lambda p: [b"roi/other", p[1], p[2]], "topic"),
    (lambda p: [p[0], p[1].replace(b'"version":1', b'"version":9'), p[2]], "version"),
    (lambda p: [p[0], p[1].replace(b'"block_size":16', b'"block_size":8'), p[2]], "inconsistent"),
    (lambda p: p[:2], "3 message parts"),
    (lambda p: [p[0], b"{not json", p[2]], "unreadable"),
])
def test_wire_rejects_malformed_messages(mutate, needle):
    _, _, parts = _message()
    with pytest.raises(WireError, match=needle):
        wire.decode(mutate(parts))


def test_published_on_the_map_socket_under_its_own_topic():
    from salstream.streamer.wire.publisher import Publisher
    from salstream.streamer.wire.subscriber import Subscriber

    with Publisher("tcp://127.0.0.1:*") as pub:
        roi_pub = RoiPublisher(pub, 128, 96, RoiConfig(block_size=32, pooling="max"))
        with Subscriber(pub.endpoint, ["cam0"], kinds={"roi"}) as rsub, Subscriber(pub.endpoint, ["cam0"]) as msub:
            # Slow joiner: publish until the subscriber is connected.
            sal = _blob(96, 128, 30, 30, 12)
            got = None
            deadline = time.monotonic() + 5.0
            i = 0
            while got is None and time.monotonic() < deadline:
                roi_pub.publish_saliency("cam0", sal, i, i / 30, time.monotonic())
                roi_pub.publish_saliency("cam01", sal, i, i / 30, time.monotonic())  # prefix of another id
                got = rsub.recv(timeout=0.05)
                i += 1
            assert got is not None, "no ROI message arrived over loopback"
            assert isinstance(got, RoiMessage) and got.stream == "cam0" and got.offsets.shape == (3, 4)
            assert got.regions and min(Region.from_list(r).qp for r in got.regions) < 0
            # The best-quality block is where the map peaks (top-left).
            r, c = np.unravel_index(np.argmin(got.offsets), got.offsets.shape)
            assert (r, c) == (0, 0)
            # The map subscriber of the same stream sees no ROI traffic.
            assert msub.recv(timeout=0.2) is None
        assert roi_pub.sent >= 2 and roi_pub.send_dropped == 0


def test_publishing_after_the_map_publisher_closed_drops_quietly():
    from salstream.streamer.wire.publisher import Publisher

    pub = Publisher("tcp://127.0.0.1:*")
    roi_pub = RoiPublisher(pub, 64, 64)
    pub.close()
    qp, regions = roi_pub.publish_saliency("cam0", _blob(64, 64, 10, 10, 5), 0, 0.0, 0.0)
    assert regions and roi_pub.sent == 0 and roi_pub.send_dropped == 1 and roi_pub.closed
