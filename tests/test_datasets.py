"""Synthetic AV benchmark and on-disk dataset loaders (tiny directories in the real layouts)."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from salstream.diffsal.datasets import layout as L
from salstream.diffsal.datasets.synthetic import SPLIT_SEEDS, SPLIT_SPAN, SyntheticClip, split_seed, write_synthetic


# ---------------------------------------------------------------------- generator
def test_clip_is_deterministic_and_seed_dependent():
    a, b, c = SyntheticClip(7, n_frames=20), SyntheticClip(7, n_frames=20), SyntheticClip(8, n_frames=20)
    for i in (0, 11, 19):
        assert np.array_equal(a.frame(i), b.frame(i))
        assert np.array_equal(a.density(i), b.density(i))
        assert np.array_equal(a.fixations(i), b.fixations(i))
    assert np.array_equal(a.audio(), b.audio())
    assert not np.array_equal(a.frame(5), c.frame(5))
    assert not np.array_equal(a.audio(), c.audio())


def test_clip_shapes_types_and_ranges():
    c = SyntheticClip(3, width=160, height=96, n_frames=10, sample_rate=8000, fps=25.0)
    f = c.frame(4)
    assert f.shape == (96, 160, 3) and f.dtype == np.uint8
    d = c.density(4)
    assert d.shape == (96, 160) and d.dtype == np.float32 and d.max() == pytest.approx(1.0) and d.min() >= 0
    fx = c.fixations(4)
    assert fx.dtype == bool and 1 <= fx.sum() <= c.n_observers
    a = c.audio()
    assert a.dtype == np.float32 and a.ndim == 1 and len(a) == round(10 / 25.0 * 8000)
    assert np.abs(a).max() <= 1.0
    with pytest.raises(IndexError, match="outside the clip"):
        c.frame(10)


def test_audio_between_matches_whole_track_and_is_silent_outside():
    c = SyntheticClip(11, n_frames=60)
    whole = c.audio()
    assert np.array_equal(c.audio_between(0.5, 1.25), whole[8000:20000])
    pad = c.audio_between(-0.5, 0.25)
    assert np.all(pad[:8000] == 0) and np.array_equal(pad[8000:], whole[:4000])
    assert np.all(c.audio_between(2.0, 2.5) == 0)   # the clip is 2 s long


def _frame_envelope(c: SyntheticClip) -> np.ndarray:
    a = c.audio()
    hop = int(c.sample_rate / c.fps)
    return np.array([np.sqrt(np.mean(a[i * hop:(i + 1) * hop] ** 2)) for i in range(c.n_frames)])


def _activity(c: SyntheticClip, k: int) -> np.ndarray:
    return np.array([c.object_state(k, i / c.fps)[3] for i in range(c.n_frames)])


def test_only_the_source_is_in_sync_with_the_sound():
    for seed in (0, 1, 2):
        c = SyntheticClip(seed, n_frames=150)
        env = _frame_envelope(c)
        corr = [np.corrcoef(env, _activity(c, k))[0, 1] for k in range(len(c.objects))]
        src = c.source_index
        assert corr[src] > 0.8, corr
        assert all(corr[k] < 0.1 for k in range(len(corr)) if k != src), corr


def test_objects_take_turns_and_each_turn_is_visible():
    c = SyntheticClip(4, n_frames=120)
    acts = np.stack([_activity(c, k) for k in range(len(c.objects))])
    assert (acts > 0).sum(axis=0).max() == 1          # never two objects active at once
    for k in range(len(c.objects)):                  # every object gets turns in 4 s
        assert (acts[k] > 0.99).sum() >= 6
    k = c.source_index
    bright = []
    for i in range(c.n_frames):
        x, y, _, _ = c.object_state(k, i / c.fps)
        bright.append(c.frame(i).astype(float)[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3].mean())
    # occlusion by another object can hide a few frames; the relation must still be strong
    assert np.corrcoef(bright, acts[k])[0, 1] > 0.7


def test_video_alone_cannot_single_out_the_source():
    # Over many clips the source is active as often and as long, and moves as fast, as the distractors.
    stats = {True: {"turns": [], "active": [], "speed": []}, False: {"turns": [], "active": [], "speed": []}}
    for seed in range(40):
        c = SyntheticClip(seed, n_frames=150)
        for k, o in enumerate(c.objects):
            st = stats[o.sounding]
            st["turns"].append(int(np.sum(o.turns[:, 0] < c.duration)))
            st["active"].append(float(_activity(c, k).mean()))
            st["speed"].append(float(np.hypot(*o.velocity)))
    for key in ("turns", "active", "speed"):
        src, dis = np.mean(stats[True][key]), np.mean(stats[False][key])
        assert abs(src - dis) < 0.1 * src, (key, src, dis)


def test_ground_truth_concentrates_on_the_source():
    c = SyntheticClip(9, n_frames=30)
    on_source = 0
    for i in range(0, 30, 5):
        x, y, r, _ = c.object_state(c.source_index, i / c.fps)
        d = c.density(i)
        yy, xx = np.mgrid[0:c.height, 0:c.width]
        near = (xx - x) ** 2 + (yy - y) ** 2 <= (2 * r) ** 2
        assert d[near].sum() / d.sum() > 0.5
        assert d[int(round(y)), int(round(x))] > 0.9
        on_source += c.fixations(i)[near].sum()
    assert on_source > 0.5 * 6 * c.n_observers


def test_tone_pitch_follows_source_height_and_timbre_its_horizontal_position():
    c = SyntheticClip(21, n_frames=150)
    src = c.objects[c.source_index]
    sr = c.sample_rate
    checked, xs, ratios = 0, [], []
    for onset in src.turns[src.turns[:, 0] < c.duration - 0.2, 0]:
        seg = c.audio_between(onset + 0.04, onset + 0.16)
        spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
        freqs = np.fft.rfftfreq(len(seg), 1 / sr)
        f0 = c.pitch_at(onset)
        assert freqs[np.argmax(spec)] == pytest.approx(f0, rel=0.08)
        level = [spec[np.abs(freqs - k * f0) < 0.04 * k * f0].max() for k in (1, 2)]
        assert level[1] / level[0] == pytest.approx(c.overtones_at(onset)[0], abs=0.06)
        xs.append(c.object_state(c.source_index, onset)[0])
        ratios.append(level[1] / level[0])
        checked += 1
    assert checked >= 3
    assert np.corrcoef(xs, ratios)[0, 1] > 0.9


def test_splits_use_disjoint_seed_ranges():
    ranges = sorted((SPLIT_SEEDS[s], SPLIT_SEEDS[s] + SPLIT_SPAN) for s in SPLIT_SEEDS)
    for (_, a1), (b0, _) in zip(ranges, ranges[1:]):
        assert a1 <= b0
    assert split_seed("test", 3) == SPLIT_SEEDS["test"] + 3
    with pytest.raises(ValueError, match="unknown split"):
        split_seed("dev", 0)


# ---------------------------------------------------------------------- writer -> loader
def test_synthetic_written_in_av_layout_reads_back(tmp_path):
    root = write_synthetic(tmp_path / "syn", {"train": 2, "test": 1}, n_frames=6, width=128, height=96)
    assert (root / "fold_lists" / "Synthetic_list_train_1_fps.txt").read_text().split() == \
        ["train_0000", "6", "30", "train_0001", "6", "30"]
    assert L.detect_layout(root) == "av"
    vids = L.load_videos(root, "test")["Synthetic"]
    assert [v.name for v in vids] == ["test_0000"]
    v = vids[0]
    clip = SyntheticClip(split_seed("test", 0), width=128, height=96, n_frames=6)
    for i in range(6):
        assert np.abs(v.frame(i).astype(int) - clip.frame(i)).mean() < 6     # JPEG
        assert np.abs(v.density(i) - clip.density(i)).max() < 0.03
        assert np.array_equal(v.fixations(i), clip.fixations(i))
    audio, rate = v.audio()
    assert rate == 16000 and np.abs(audio - clip.audio()).max() < 1e-4
    # a second call with the same parameters reuses the written clips
    before = (root / "video_frames" / "Synthetic" / "train_0000" / "img_00001.jpg").stat().st_mtime_ns
    write_synthetic(root, {"train": 2}, n_frames=6, width=128, height=96)
    assert (root / "video_frames" / "Synthetic" / "train_0000" / "img_00001.jpg").stat().st_mtime_ns == before


# ---------------------------------------------------------------------- real layouts
def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _make_av_video(root: Path, ds: str, vid: str, n: int, fix_format: str = "mat") -> None:
    rng = np.random.default_rng(abs(hash((ds, vid))) % 2**32)
    for i in range(1, n + 1):
        frame = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        fdir = root / "video_frames" / ds / vid
        fdir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(fdir / f"img_{i:05d}.jpg", quality=95)
        m = np.zeros((24, 32), np.uint8)
        m[10:14, 10 + i:14 + i] = 255
        _png(root / "annotations" / ds / vid / "maps" / f"eyeMap_{i:05d}.jpg", m)
        fix = np.zeros((24, 32), np.uint8)
        fix[12, 12 + i] = 1
        adir = root / "annotations" / ds / vid
        if fix_format == "mat":
            savemat(str(adir / f"fixMap_{i:05d}.mat"), {"eyeMap": fix})
        else:
            _png(adir / f"fixMap_{i:05d}.png", fix * 255)
    L.write_wav(root / "video_audio" / ds / vid / f"{vid}.wav", np.sin(np.arange(8000) / 10.0) * 0.5, 22050)


def test_av_layout_folds_and_single_split(tmp_path):
    root = tmp_path / "data"
    _make_av_video(root, "AVAD", "V1_cat", 3)
    _make_av_video(root, "AVAD", "V2_dog", 2, fix_format="png")
    _make_av_video(root, "DIEM", "clip_a", 2)
    for fold, (tr, te) in {1: ("V1_cat", "V2_dog"), 2: ("V2_dog", "V1_cat"), 3: ("V1_cat", "V2_dog")}.items():
        n = {"V1_cat": 3, "V2_dog": 2}
        L.write_split_file(root / "fold_lists" / f"AVAD_list_train_{fold}_fps.txt", [L.VideoEntry(tr, n[tr], 29.97)])
        L.write_split_file(root / "fold_lists" / f"AVAD_list_test_{fold}_fps.txt", [L.VideoEntry(te, n[te], 29.97)])
    (root / "fold_lists" / "DIEM_list_test_fps.txt").write_text("clip_a 2 30\n")

    assert L.split_file(root, "Coutrot1", "train", 2).name == "Coutrot_db1_list_train_2_fps.txt"
    assert L.split_file(root, "DIEM", "test", 3).name == "DIEM_list_test_fps.txt"
    got = L.load_av_dataset(root, "AVAD", "test", fold=2)
    assert [(v.name, v.n_frames, v.fps) for v in got] == [("V1_cat", 3, 29.97)]
    v = got[0]
    assert v.frame(2).shape == (24, 32, 3)
    d = v.density(1)
    assert d.dtype == np.float32 and d.max() == pytest.approx(1.0, abs=0.02) and d[0, 0] == pytest.approx(0, abs=0.02)
    assert np.argwhere(v.fixations(1)).tolist() == [[12, 14]]
    audio, rate = v.audio()
    assert rate == 22050 and audio.dtype == np.float32 and len(audio) == 8000
    png_fix = L.load_av_dataset(root, "AVAD", "test", fold=1)[0]
    assert np.argwhere(png_fix.fixations(0)).tolist() == [[12, 13]]
    assert [v.name for v in L.load_av_dataset(root, "DIEM", "test", fold=3)] == ["clip_a"]
    assert set(L.load_videos(root, "test", fold=1)) == {"AVAD", "DIEM"}


def test_av_layout_errors_name_the_missing_piece(tmp_path):
    root = tmp_path / "data"
    _make_av_video(root, "ETMD_av", "e1", 2)
    with pytest.raises(L.DatasetError, match="ETMD_av_list_train_1_fps.txt not found"):
        L.load_av_dataset(root, "ETMD", "train")
    (root / "fold_lists").mkdir()
    (root / "fold_lists" / "ETMD_av_list_train_1_fps.txt").write_text("e1 2\n")
    with pytest.raises(L.DatasetError, match=r"ETMD_av_list_train_1_fps.txt:1: expected 'name n_frames fps'"):
        L.load_av_dataset(root, "ETMD", "train")
    (root / "fold_lists" / "ETMD_av_list_train_1_fps.txt").write_text("e1 2 30\nmissing 5 30\n")
    with pytest.raises(L.DatasetError, match="ETMD_av/missing: frame folder"):
        L.load_av_dataset(root, "ETMD", "train")
    (root / "fold_lists" / "ETMD_av_list_train_1_fps.txt").write_text("e1 3 30\n")
    v = L.load_av_dataset(root, "ETMD", "train")[0]
    with pytest.raises(L.DatasetError, match="img_00003.jpg is missing"):
        v.frame(2)
    with pytest.raises(L.DatasetError, match="does not exist"):
        L.detect_layout(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(L.DatasetError, match="matches no known layout"):
        L.detect_layout(tmp_path / "empty")


def _make_dhf1k_video(d: Path, n: int) -> None:
    for i in range(1, n + 1):
        _png(d / "images" / f"{i:04d}.png", np.full((18, 32, 3), 10 * i, np.uint8))
        m = np.zeros((18, 32), np.uint8)
        m[5:9, i:i + 4] = 200
        _png(d / "maps" / f"{i:04d}.png", m)
        f = np.zeros((18, 32), np.uint8)
        f[7, i + 1] = 255
        _png(d / "fixation" / f"{i:04d}.png", f)


def test_dhf1k_layout_by_number_and_by_folder(tmp_path):
    flat = tmp_path / "dhf1k"
    for vid, n in (("0001", 3), ("0600", 2), ("0601", 4)):
        _make_dhf1k_video(flat / vid, n)
    assert L.detect_layout(flat) == "dhf1k"
    train = L.load_dhf1k(flat, "train")
    assert [(v.name, v.n_frames) for v in train] == [("0001", 3), ("0600", 2)]
    val = L.load_videos(flat, "test")["DHF1K"]
    assert [v.name for v in val] == ["0601"]
    v = val[0]
    assert v.frame(2)[0, 0].tolist() == [30, 30, 30]
    assert v.density(0).max() == pytest.approx(200 / 255)
    assert np.argwhere(v.fixations(2)).tolist() == [[7, 4]]
    split = tmp_path / "dhf1k_split"
    _make_dhf1k_video(split / "val" / "0650", 2)
    _make_dhf1k_video(split / "train" / "0007", 2)
    assert [v.name for v in L.load_dhf1k(split, "val")] == ["0650"]
    with pytest.raises(L.DatasetError, match="test has no public maps"):
        L.load_dhf1k(split, "test")
