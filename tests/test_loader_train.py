"""The DALI training loader on real shards built from generated index clips (real DALI on CPU).

Clips are 16 fps, 128x128 (-> 112x112 shards, so a 112 crop keeps the whole frame) and show their
frame index as a block code (``tools.demo_data``), so the decoded frames say which frames they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from crisscross.preprocess.build import build_shards
from crisscross.shards import format as shard_format
from crisscross.shards.augment import KINETICS_MEAN, KINETICS_STD, LOG_EPS, LOGMEL_MEAN, LOGMEL_STD
from crisscross.shards.loader import LoaderConfig, ShardError, build_train_loader, find_shards
from crisscross.shards.pipelines import ReaderSpec, build_pipeline, plan_graph
from crisscross.shards.reader import iter_samples
from crisscross.shards.views import FALLBACK_NONE, FALLBACK_PADDED, FALLBACK_SHRUNK
from crisscross.tools.demo_data import read_frame_index, write_av_file, write_index_clip

CLIP_SECONDS = {"long": 12.0, "mid": 7.0, "short": 3.5, "tiny": 1.5}
NO_VIDEO_AUG = {"crop": False, "flip": False, "color_jitter": False, "grayscale": False, "blur": False, "cutout": False}
NO_AUDIO_AUG = {"volume": False, "freq_mask": False, "time_mask": False, "random_crop": False}


@pytest.fixture(scope="session")
def index_shards(tmp_path_factory) -> Path:
    """Four index clips (12, 7, 3.5, 1.5 s) in two shards."""
    root = tmp_path_factory.mktemp("loader_index")
    src = root / "src"
    src.mkdir()
    for name, seconds in CLIP_SECONDS.items():
        write_index_clip(src / f"{name}.mp4", seconds=seconds, fps=16, size=(128, 128), codec="mjpeg")
    build_shards(src, root / "shards", name="idx", progress=False, samples_per_shard=2)
    return root / "shards"


@pytest.fixture(scope="session")
def static_shards(tmp_path_factory) -> Path:
    """Four clips whose frames are all the same textured image: a temporally consistent
    augmentation must then give identical frames within a view."""
    root = tmp_path_factory.mktemp("loader_static")
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        base = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        image = np.kron(base, np.ones((16, 16, 1), dtype=np.uint8))  # 128x128 blocks: survives JPEG
        audio = (0.1 * rng.standard_normal(16000 * 4)).astype(np.float32)
        write_av_file(src / f"static{i}.mp4", (image for _ in range(64)), audio, fps=16, sample_rate=16000, video_codec="mjpeg")
    build_shards(src, root / "shards", name="static", progress=False)
    return root / "shards"


@pytest.fixture(scope="session")
def samples(index_shards) -> dict:
    """key -> (index vector, frames, audio) as the plain-Python reader decodes them."""
    return {s.key: s for s in iter_samples(index_shards)}


def _name(samples: dict, key: str) -> str:
    """The source clip's name (its file stem) of a sample key."""
    return Path(samples[key].meta["source"]).stem


def _config(shards: Path, **overrides) -> dict:
    cfg = {"shards": str(shards), "frames": 4, "crop": 112, "audio_seconds": 2.0, "num_threads": 2,
           "shuffle_buffer": 4, "augment": {"video": NO_VIDEO_AUG, "audio": NO_AUDIO_AUG}}
    cfg.update(overrides)
    return cfg


def _unnormalize(video: torch.Tensor) -> np.ndarray:
    """[3,T,H,W] normalized -> [T,H,W,3] uint8-range floats."""
    mean = torch.tensor(KINETICS_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(KINETICS_STD).view(3, 1, 1, 1)
    return ((video * std + mean) * 255.0).permute(1, 2, 3, 0).numpy()


def _librosa_logmel(wave: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=wave, sr=16000, n_fft=1024, hop_length=160, n_mels=80, fmin=0.0, power=2.0)
    return np.log(mel + LOG_EPS)


# ----------------------------------------------------------------------------- config


def test_config_rejects_unknown_keys_and_modes(index_shards):
    with pytest.raises(ValueError, match="unknown config key 'data.relaxtion'"):
        LoaderConfig.from_dict({"shards": str(index_shards), "relaxtion": "mild"})
    with pytest.raises(ValueError, match="relaxation"):
        LoaderConfig.from_dict({"shards": str(index_shards), "relaxation": "wild"})
    with pytest.raises(ValueError, match="unknown config key 'data.augment.video.blurr'"):
        LoaderConfig.from_dict({"shards": str(index_shards), "augment": {"video": {"blurr": False}}})
    cfg = LoaderConfig.from_dict({"shards": str(index_shards), "augment": {"audio": {"time_warp": True}}})
    assert cfg.augment.audio.time_warp and cfg.augment.video.blur and cfg.relaxation == "mild"


# ----------------------------------------------------------------------------- exact content


def test_frames_and_audio_are_exactly_the_sampled_window(index_shards, samples):
    """Every decoded frame is the shard frame round((t - video_offset) * fps) + j, and every
    log-mel is librosa's on the PCM window starting at round((t - audio_offset) * sr)."""
    loader = build_train_loader(_config(index_shards, relaxation="mixed"), batch_size=2, seed=3)
    checked = 0
    for _ in range(2):
        for batch in loader:
            for b, key in enumerate(batch["key"]):
                sample = samples[key]
                idx = sample.index
                fps, sr = idx[shard_format.Index.FPS], idx[shard_format.Index.SAMPLE_RATE]
                nf = int(idx[shard_format.Index.NUM_FRAMES])
                for view in (1, 2):
                    t_video, t_audio = batch["times"][b, 2 * (view - 1)].item(), batch["times"][b, 2 * (view - 1) + 1].item()
                    first = int(np.floor((t_video - idx[shard_format.Index.VIDEO_OFFSET]) * fps + 0.5))
                    expected = [min(first + j, nf - 1) for j in range(4)]
                    frames = _unnormalize(batch[f"v{view}"][b])
                    assert [read_frame_index(f) for f in frames] == expected
                    # pixels too: the same frames the plain-Python reader decodes (same JPEG data)
                    assert np.abs(frames - sample.frames[expected].astype(np.float32)).mean() < 2.0
                    start = int(np.floor((t_audio - idx[shard_format.Index.AUDIO_OFFSET]) * sr + 0.5))
                    window = np.zeros(32000, np.float32)
                    part = sample.audio[start : start + 32000]
                    window[: len(part)] = part
                    reference = (_librosa_logmel(window)[:, :200] - LOGMEL_MEAN) / LOGMEL_STD
                    got = batch[f"a{view}"][b, 0].numpy()
                    assert got.shape == (80, 200)
                    np.testing.assert_allclose(got, reference, atol=1e-3)
                checked += 1
    assert checked >= 8


def test_view_audio_and_video_start_together(index_shards, samples):
    """Default (paper) alignment: in every mode both modalities of each view start at the same
    time, and the frame decoded first is the one shown at that time."""
    for mode in ("none", "mild", "medium", "extreme", "mixed"):
        loader = build_train_loader(_config(index_shards, relaxation=mode), batch_size=2, seed=1)
        for batch in loader:
            t = batch["times"].numpy()
            np.testing.assert_allclose(t[:, 0], t[:, 1], atol=1e-9)
            np.testing.assert_allclose(t[:, 2], t[:, 3], atol=1e-9)
            for b, key in enumerate(batch["key"]):
                last = int(samples[key].index[0]) - 1
                for view in (1, 2):
                    frames = _unnormalize(batch[f"v{view}"][b])
                    assert read_frame_index(frames[0]) == min(int(np.floor(t[b, 2 * view - 2] * 16 + 0.5)), last)


# ----------------------------------------------------------------------------- modes (plan pipeline only)


def _draw_times(shards: Path, mode: str, rounds: int, **cfg_overrides) -> list[tuple[str, np.ndarray, int]]:
    """Many (key, times, fallback) draws from the real plan pipeline (no decoding needed)."""
    cfg = LoaderConfig.from_dict(_config(shards, relaxation=mode, frames=8, **cfg_overrides))
    found = find_shards(shards)
    reader = ReaderSpec(paths=found.tars, index_paths=found.indexes, shuffle=False)
    pipe = build_pipeline(lambda: plan_graph(cfg.graph_spec(), reader, []), device="cpu", batch_size=4,
                          num_threads=1, device_id=None, seed=11)
    draws = []
    for _ in range(rounds):
        outputs = pipe.run()
        keys = [bytes(r).rstrip(b"\0").decode().rsplit(":", 1)[-1].split(".")[0] for r in outputs[4].as_array()]
        for key, times, code in zip(keys, outputs[5].as_array(), outputs[6].as_array()):
            draws.append((key, times.copy(), int(code)))
    return draws


def _overlap(start_a: float, width_a: float, start_b: float, width_b: float) -> bool:
    return start_a < start_b + width_b and start_b < start_a + width_a


WV, WA = 0.5, 2.0  # 8 frames at 16 fps; 2 s audio
# Paper alignment: view 2 starts (both modalities) this long after view 1.
PAPER_OFFSET = {"none": 0.0, "mild": WV / 2, "medium": WV, "extreme_official": 3.0}
# Clips (of CLIP_SECONDS) on which each mode's definition holds (no fallback), per alignment.
FITS = {
    "paper": {"none": {"long", "mid", "short"}, "mild": {"long", "mid", "short"}, "medium": {"long", "mid", "short"},
              "extreme": {"long", "mid"}, "extreme_official": {"long", "mid"}, "mixed": {"long", "mid", "short"}},
}
# official: mild needs 1.5 Wa = 3 s (the 3.5 s clip fits), medium 2 Wa = 4 s (it does not)
FITS["official"] = dict(FITS["paper"], medium={"long", "mid"})
# Fraction of the official sampler's checked draws with a sync pair that does not overlap at all:
# mild: video block jitter j ~ U(0, 2.25 s); v1 misses a1 when j > 2, v2 misses a2 when j < 0.25 -> 0.5/2.25.
# medium: j ~ U(0, 3 s); v1 misses a1 when j > 2, v2 misses a2 when j < 1 -> 2/3.
OFFICIAL_SYNC_MISS = {"mild": 0.5 / 2.25, "medium": 2 / 3}
OFFICIAL_JITTER = {"none": WA - WV, "mild": 1.5 * (WA - WV), "medium": 2 * (WA - WV), "mixed": WA - WV}
ROUNDS = 50  # plan-pipeline runs of 4 samples (each clip once per run)


def _check_draw(mode: str, alignment: str, times: np.ndarray, lo: float, middle: float) -> None:
    """The mode's definition for one draw that did not fall back."""
    tv1, ta1, tv2, ta2 = times
    official = alignment == "official"
    if official and mode in ("none", "mild", "medium", "mixed"):
        # official: the video block lies inside the audio block, view 2 offset per modality
        if mode in ("none", "mild", "medium"):
            fraction = {"none": 0.0, "mild": 0.5, "medium": 1.0}[mode]
            assert tv2 - tv1 == pytest.approx(fraction * WV) and ta2 - ta1 == pytest.approx(fraction * WA)
            assert ta1 - 1e-9 <= tv1 and tv2 + WV <= ta2 + WA + 1e-9
        else:  # mixed: each view's video inside its own audio window
            for tv, ta in ((tv1, ta1), (tv2, ta2)):
                assert ta - 1e-9 <= tv <= ta + WA - WV + 1e-9
        return
    # paper (and the official extreme samplers, which have no jitter): a view's modalities start
    # together, so both sync pairs overlap; the async pairs are t2 - t1 apart
    assert tv1 == ta1 and tv2 == ta2
    assert _overlap(tv1, WV, ta1, WA) and _overlap(tv2, WV, ta2, WA)
    if mode in PAPER_OFFSET:
        assert ta2 - tv1 == pytest.approx(PAPER_OFFSET[mode]) and tv2 - ta1 == pytest.approx(PAPER_OFFSET[mode])
    elif mode == "extreme":
        assert tv1 + WA <= middle + 1e-9 and tv2 >= middle - 1e-9


@pytest.mark.parametrize("alignment", ["paper", "official"])
@pytest.mark.parametrize("mode", ["none", "mild", "medium", "extreme", "extreme_official", "mixed"])
def test_mode_offsets_hold_over_many_draws(index_shards, samples, mode, alignment):
    """Every draw of the real plan graph is checked; the checked (non-fallback) draws are counted,
    so the test cannot pass because the draws fell back."""
    draws = _draw_times(index_shards, mode, rounds=ROUNDS, view_alignment=alignment)
    assert len(draws) == 4 * ROUNDS
    codes, checked, sync_miss = {}, 0, 0
    for key, times, code in draws:
        idx = samples[key].index
        video_end = idx[shard_format.Index.NUM_FRAMES] / idx[shard_format.Index.FPS] + idx[shard_format.Index.VIDEO_OFFSET]
        audio_end = idx[shard_format.Index.NUM_AUDIO_SAMPLES] / idx[shard_format.Index.SAMPLE_RATE] + idx[shard_format.Index.AUDIO_OFFSET]
        lo = max(idx[shard_format.Index.VIDEO_OFFSET], idx[shard_format.Index.AUDIO_OFFSET])
        tv1, ta1, tv2, ta2 = times
        codes.setdefault(_name(samples, key), set()).add(code)
        assert min(times) >= lo - 1e-9
        if code == FALLBACK_PADDED:
            assert tv1 == ta1 == tv2 == ta2 == lo
            continue
        for tv, ta in ((tv1, ta1), (tv2, ta2)):  # every window inside the clip
            assert tv + WV <= video_end + 1e-9 and ta + WA <= audio_end + 1e-9
        if code != FALLBACK_NONE:
            assert code == FALLBACK_SHRUNK
            if alignment == "paper":
                assert tv1 == ta1 and tv2 == ta2  # shrunk offsets, still aligned
            continue
        _check_draw(mode, alignment, times, lo, 0.5 * (lo + min(video_end, audio_end)))
        checked += 1
        sync_miss += not (_overlap(tv1, WV, ta1, WA) and _overlap(tv2, WV, ta2, WA))
    fits = FITS[alignment][mode]
    assert checked == ROUNDS * len(fits)
    assert {name for name, c in codes.items() if c == {FALLBACK_NONE}} == fits
    # The 1.5 s clip is shorter than one 2 s view: always padded, never silently.
    assert codes["tiny"] == {FALLBACK_PADDED}
    if alignment == "official" and mode in OFFICIAL_SYNC_MISS:
        expected = OFFICIAL_SYNC_MISS[mode]
        assert abs(sync_miss / checked - expected) <= 4 * np.sqrt(expected * (1 - expected) / checked)
    else:
        assert sync_miss == 0
    if mode == "mixed":
        ordered = [(t[0] < t[2]) for k, t, c in draws if _name(samples, k) == "long"]
        assert any(ordered) and not all(ordered)  # independent draws: either view may come first
    else:
        starts = [t[1] for k, t, c in draws if _name(samples, k) == "long"]
        assert np.std(starts) > 0.3  # t1 is random, not a constant
    if alignment == "official" and mode in OFFICIAL_JITTER:
        # the video block's start is uniform over the whole audio block: U(0, (1 + d/W) (Wa - Wv))
        jitter = np.array([t[0] - t[1] for k, t, c in draws if c == FALLBACK_NONE])
        span = OFFICIAL_JITTER[mode]
        assert jitter.min() >= -1e-9 and jitter.max() <= span + 1e-9
        assert jitter.min() < 0.1 * span and jitter.max() > 0.9 * span  # fails with p < 1e-6 if uniform


def test_view_alignment_is_validated(index_shards):
    with pytest.raises(ValueError, match="view_alignment"):
        LoaderConfig.from_dict({"shards": str(index_shards), "view_alignment": "sync"})
    assert LoaderConfig.from_dict({"shards": str(index_shards)}).view_alignment == "paper"


def test_short_clip_fallbacks_are_counted(index_shards):
    loader = build_train_loader(_config(index_shards, relaxation="extreme", shuffle=False), batch_size=2, seed=0)
    for _ in loader:
        pass
    stats = loader.stats()
    assert stats["samples"] == 4 and stats["fallback_padded"] == 1 and stats["fallback_shrunk"] == 1


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_is_consistent_within_a_view_and_differs_across_views(static_shards):
    cfg = {"shards": str(static_shards), "frames": 4, "crop": 64, "audio_seconds": 1.0, "shuffle_buffer": 4}
    loader = build_train_loader(cfg, batch_size=4, seed=5)  # every augmentation on
    batch = next(iter(loader))
    for view in ("v1", "v2"):
        clips = batch[view]
        assert clips.shape == (4, 3, 4, 64, 64)
        # all frames of a static clip went through the same crop/flip/colour/blur/cutout
        assert torch.equal(clips[:, :, :1].expand_as(clips), clips)
    differs = [not torch.allclose(batch["v1"][b], batch["v2"][b], atol=1e-3) for b in range(4)]
    assert all(differs)
    assert batch["a1"].shape == (4, 1, 80, 100)
    assert not torch.allclose(batch["a1"], batch["a2"])


def test_each_augmentation_can_be_switched_off(static_shards):
    cfg = {"shards": str(static_shards), "frames": 2, "crop": 64, "audio_seconds": 1.0, "relaxation": "none",
           "augment": {"video": NO_VIDEO_AUG, "audio": NO_AUDIO_AUG}}
    batch = next(iter(build_train_loader(cfg, batch_size=4, seed=5)))
    # relaxation none + no augmentation: the two views are identical
    assert torch.equal(batch["v1"], batch["v2"]) and torch.equal(batch["a1"], batch["a2"])
    for name in ("flip", "color_jitter", "cutout", "crop"):
        video = dict(NO_VIDEO_AUG, **{name: True})
        if name == "flip":
            video["flip_p"] = 1.0
        cfg_on = dict(cfg, augment={"video": video, "audio": NO_AUDIO_AUG})
        on = next(iter(build_train_loader(cfg_on, batch_size=4, seed=5)))
        assert not torch.equal(on["v1"], batch["v1"]), name
        if name == "flip":
            assert torch.allclose(on["v1"], batch["v1"].flip(-1))
    for name in ("volume", "freq_mask", "time_mask", "random_crop", "time_warp"):
        cfg_on = dict(cfg, augment={"video": NO_VIDEO_AUG, "audio": dict(NO_AUDIO_AUG, **{name: True})})
        on = next(iter(build_train_loader(cfg_on, batch_size=4, seed=5)))
        assert on["a1"].shape == batch["a1"].shape and not torch.equal(on["a1"], batch["a1"]), name


# ----------------------------------------------------------------------------- determinism and resume


def _collect(loader, n: int) -> list[dict]:
    out = []
    while len(out) < n:
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                break
    return out


def _same(a: dict, b: dict) -> bool:
    return a["key"] == b["key"] and all(torch.equal(a[k], b[k]) for k in ("v1", "v2", "a1", "a2", "times"))


def test_same_seed_same_batches_other_seed_other_batches(static_shards):
    cfg = {"shards": str(static_shards), "frames": 2, "crop": 32, "audio_seconds": 1.0, "shuffle_buffer": 4}
    first = _collect(build_train_loader(cfg, batch_size=2, seed=7), 3)
    again = _collect(build_train_loader(cfg, batch_size=2, seed=7), 3)
    other = _collect(build_train_loader(cfg, batch_size=2, seed=8), 3)
    assert all(_same(a, b) for a, b in zip(first, again))
    assert not all(_same(a, b) for a, b in zip(first, other))


def test_checkpoint_restore_continues_the_same_sequence(static_shards):
    cfg = {"shards": str(static_shards), "frames": 2, "crop": 32, "audio_seconds": 1.0, "shuffle_buffer": 4}
    reference = build_train_loader(cfg, batch_size=1, seed=2)
    assert len(reference) == 4
    stream = iter(reference)
    for _ in range(3):  # stop mid-epoch
        next(stream)
    state = reference.state_dict()
    expected = [next(stream)]  # the rest of epoch 0 ...
    expected += _collect(reference, 5)  # ... and into the next epochs
    restored = build_train_loader(cfg, batch_size=1, seed=2)
    restored.load_state_dict(state)
    got = _collect(restored, 6)
    assert [b["key"] for b in got] == [b["key"] for b in expected]
    assert all(_same(a, b) for a, b in zip(got, expected))
    assert restored.stats()["epoch"] == reference.stats()["epoch"]
    with pytest.raises(ValueError, match="different"):
        build_train_loader(dict(cfg, relaxation="none"), batch_size=1, seed=2).load_state_dict(state)


def test_a_state_from_before_packed_draws_resumes_on_its_own_plan_graph(static_shards):
    """A version-1 loader state (one random operator per draw in the plan graph) resumes on that
    graph, batch for batch; new states are version 2 (packed draws); other versions are refused."""
    cfg = {"shards": str(static_shards), "frames": 2, "crop": 32, "audio_seconds": 1.0, "shuffle_buffer": 4}
    legacy = build_train_loader(cfg, batch_size=1, seed=2)
    legacy._state_version = 1  # as a loader of the earlier version built its plan
    legacy._plan = legacy._build_plan(checkpoint=None)
    stream = iter(legacy)
    for _ in range(2):
        next(stream)
    state = legacy.state_dict()
    assert state["version"] == 1
    expected = [next(stream)] + _collect(legacy, 3)
    restored = build_train_loader(cfg, batch_size=1, seed=2)
    assert restored.state_dict()["version"] == 2
    restored.load_state_dict(state)
    got = _collect(restored, 4)
    assert all(_same(a, b) for a, b in zip(got, expected))
    packed = _collect(build_train_loader(cfg, batch_size=1, seed=2), 6)  # the same keys, other draws
    assert not all(_same(a, b) for a, b in zip(packed[2:], expected))
    with pytest.raises(ValueError, match="version 99"):
        build_train_loader(cfg, batch_size=1, seed=2).load_state_dict(dict(state, version=99))


@pytest.mark.parametrize("mode, shared", [("mild", True), ("none", True), ("medium", True), ("extreme", False)])
def test_overlapping_audio_views_share_one_stft(static_shards, monkeypatch, mode: str, shared: bool):
    """Two audio views whose windows overlap by whole hops (mild: view 2 starts Wv/2 = 25 hops
    later; none: the same window; medium: Wv) are transformed with one STFT of their union; every
    augmentation on, the batches equal those of two separate STFTs up to float rounding. Views
    that do not overlap (extreme) take the separate path."""
    import crisscross.shards.loader as loader_module

    cfg = {"shards": str(static_shards), "frames": 8, "crop": 32, "audio_seconds": 1.0, "shuffle_buffer": 4,
           "relaxation": mode}
    union = build_train_loader(cfg, batch_size=2, seed=3)
    with monkeypatch.context() as patch:
        patch.setattr(loader_module, "uses_audio_union", lambda spec: False)
        apart = build_train_loader(cfg, batch_size=2, seed=3)
    got, want = _collect(union, 4), _collect(apart, 4)
    assert union.stats()["audio_shared"] == (8 if shared else 0) and apart.stats()["audio_shared"] == 0
    for a, b in zip(got, want):
        assert a["key"] == b["key"] and torch.equal(a["v1"], b["v1"]) and torch.equal(a["v2"], b["v2"])
        for view in ("a1", "a2"):
            assert torch.allclose(a[view], b[view], atol=2e-4), (view, float((a[view] - b[view]).abs().max()))
    if mode == "none":  # one window: the views differ only by their augmentations
        assert not torch.equal(got[0]["a1"], got[0]["a2"])


def test_two_ranks_see_disjoint_samples_covering_the_dataset(index_shards, samples):
    for epoch in range(2):
        seen = []
        loaders = [build_train_loader(_config(index_shards), batch_size=2, rank=r, world_size=2, seed=4) for r in (0, 1)]
        for loader in loaders:
            assert len(loader) == 1
            for _ in range(epoch):  # later epochs too (DALI rotates shards between epochs)
                for _ in loader:
                    pass
            keys = [k for batch in loader for k in batch["key"]]
            assert len(keys) == 2
            seen.append({_name(samples, k) for k in keys})
        assert not seen[0] & seen[1]
        assert seen[0] | seen[1] == set(CLIP_SECONDS)


# ----------------------------------------------------------------------------- bad shards


def test_truncated_shard_is_named(index_shards, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(index_shards, broken)
    tar = broken / "idx-000001.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2 // 512 * 512])
    with pytest.raises(ShardError, match="idx-000001.tar"):
        build_train_loader(_config(broken), batch_size=2)


def test_corrupt_video_in_a_shard_is_named(index_shards, tmp_path):
    broken = tmp_path / "corrupt"
    shutil.copytree(index_shards, broken)
    tar = broken / "idx-000000.tar"
    data = bytearray(tar.read_bytes())
    line = (broken / "idx-000000.idx").read_text().splitlines()[1].split()
    ext_pos = line.index(shard_format.VIDEO_EXT)
    offset, size = int(line[ext_pos + 1]), int(line[ext_pos + 2])
    data[offset : offset + size] = bytes(size)  # the first sample's video: zeros
    tar.write_bytes(bytes(data))
    loader = build_train_loader(_config(broken, shuffle=False), batch_size=2)
    with pytest.raises(ShardError, match="idx-000000.tar"):
        for _ in loader:
            pass


# ----------------------------------------------------------------------------- JPEG frame table


def test_frame_table_matches_the_demuxer(index_shards, samples):
    """The MP4 sample-table parse gives exactly the packets PyAV demuxes, each a whole JPEG."""
    import io

    import av

    from crisscross.shards.mjpeg_frames import Mp4Error, frame_table, jpeg_frames

    for sample in samples.values():
        data = np.frombuffer(sample.raw[shard_format.VIDEO_EXT], dtype=np.uint8)
        offsets, sizes = frame_table(data)
        with av.open(io.BytesIO(data.tobytes())) as container:
            packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
        assert [(int(o), int(s)) for o, s in zip(offsets, sizes)] == packets
        first, last = jpeg_frames(data, (offsets, sizes), np.array([0, 10**6]))
        assert bytes(first[:2]) == b"\xff\xd8" and bytes(last[-2:]) == b"\xff\xd9"
        assert last.nbytes == sizes[-1]  # indices past the end are clamped to the last frame
    with pytest.raises(Mp4Error):
        frame_table(np.zeros(4096, dtype=np.uint8))


def test_rates_must_match_the_shards(index_shards):
    with pytest.raises(ValueError, match="fps"):
        build_train_loader(_config(index_shards, fps=25.0), batch_size=2)
