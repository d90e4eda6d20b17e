"""SvaCLR's speed co-augmentation in the DALI training loader (``data.speed``, real DALI on CPU).

View 2's video at speed s takes every s-th frame (index clips show their frame index, so the
decoded frames say which frames they are); its audio is a window s times longer resampled to the
view's length (checked on the plan's PCM windows and against numpy on a chirp); the speeds are in
the batch and uniform over the configured sets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crisscross.config import ConfigError
from crisscross.preprocess.build import build_shards
from crisscross.shards import format as shard_format
from crisscross.shards.loader import LoaderConfig, build_train_loader, find_shards
from crisscross.shards.pipelines import ReaderSpec, _sped_to_view, build_pipeline, plan_graph, split_plan
from crisscross.shards.reader import iter_samples
from crisscross.shards.views import FALLBACK_NONE
from crisscross.tools.demo_data import read_frame_index, write_index_clip

NO_VIDEO_AUG = {"crop": False, "flip": False, "color_jitter": False, "grayscale": False, "blur": False, "cutout": False}
NO_AUDIO_AUG = {"volume": False, "freq_mask": False, "time_mask": False, "random_crop": False}
SR = 16000


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Three index clips (12, 9, 2.5 s; the last shorter than the speed-4 window), 16 fps."""
    root = tmp_path_factory.mktemp("loader_speed")
    src = root / "src"
    src.mkdir()
    for name, seconds in {"long": 12.0, "mid": 9.0, "short": 2.5}.items():
        write_index_clip(src / f"{name}.mp4", seconds=seconds, fps=16, size=(128, 128), codec="mjpeg")
    build_shards(src, root / "shards", name="spd", progress=False, samples_per_shard=2)
    return root / "shards"


@pytest.fixture(scope="module")
def samples(shards) -> dict:
    return {s.key: s for s in iter_samples(shards)}


def _config(shards: Path, **speed) -> dict:
    return {"shards": str(shards), "frames": 4, "crop": 112, "audio_seconds": 1.0, "num_threads": 1,
            "shuffle_buffer": 4, "relaxation": "none", "speed": {"enabled": True, **speed},
            "augment": {"video": NO_VIDEO_AUG, "audio": NO_AUDIO_AUG}}


def _plan_draws(shards: Path, rounds: int, **speed) -> list[dict]:
    cfg = LoaderConfig.from_dict(_config(shards, **speed))
    found = find_shards(shards)
    reader = ReaderSpec(paths=found.tars, index_paths=found.indexes, shuffle=False)
    pipe = build_pipeline(lambda: plan_graph(cfg.graph_spec(), reader, []), device="cpu", batch_size=3,
                          num_threads=1, device_id=None, seed=5)
    rows = []
    for _ in range(rounds):
        named, _ = split_plan(pipe.run())
        for b in range(3):
            key = bytes(named["key"].as_array()[b]).rstrip(b"\0").decode().rsplit(":", 1)[-1].split(".")[0]
            rows.append({"key": key, "times": named["times"].as_array()[b].copy(),
                         "speed": named["speed"].as_array()[b].copy(), "wave2": np.array(named["wave2"][b]),
                         "fallback": int(named["fallback"].as_array()[b])})
    return rows


def test_config_is_validated():
    with pytest.raises((ValueError, ConfigError), match="data.speed.video"):
        LoaderConfig.from_dict({"speed": {"enabled": True, "video": [0, 2]}})
    with pytest.raises((ValueError, ConfigError), match="tie"):
        LoaderConfig.from_dict({"speed": {"enabled": True, "video": [1, 2], "audio": [1, 3], "tie": True}})
    with pytest.raises((ValueError, ConfigError), match="unknown config key 'data.speed.rate'"):
        LoaderConfig.from_dict({"speed": {"rate": 2}})
    assert LoaderConfig.from_dict({}).speed.spec() is None  # off by default


def test_view2_frames_are_strided_by_the_video_speed(shards, samples):
    """View 1: first + k; view 2: first + s_v * k (the last frame repeats past the end)."""
    loader = build_train_loader(_config(shards), batch_size=2, seed=3)
    seen = set()
    for _ in range(4):
        for batch in loader:
            assert batch["speed"].shape == (2, 4) and batch["speed"].dtype == torch.float32
            for b, key in enumerate(batch["key"]):
                idx = samples[key].index
                fps, nf = idx[shard_format.Index.FPS], int(idx[shard_format.Index.NUM_FRAMES])
                s_v = int(batch["speed"][b, 2])
                assert batch["speed"][b, 0] == 1 and batch["speed"][b, 1] == 1
                for view, speed in ((1, 1), (2, s_v)):
                    t_video = batch["times"][b, 2 * (view - 1)].item()
                    first = int(np.floor((t_video - idx[shard_format.Index.VIDEO_OFFSET]) * fps + 0.5))
                    expected = [min(first + speed * k, nf - 1) for k in range(4)]
                    got = [read_frame_index(f) for f in _frames(batch[f"v{view}"][b])]
                    assert got == expected, (key, view, speed)
                seen.add(s_v)
    assert len(seen) >= 3  # several speeds went through the decoder


def _frames(video: torch.Tensor) -> np.ndarray:
    from crisscross.shards.augment import KINETICS_MEAN, KINETICS_STD

    mean = torch.tensor(KINETICS_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(KINETICS_STD).view(3, 1, 1, 1)
    return ((video * std + mean) * 255.0).permute(1, 2, 3, 0).numpy()


def test_view2_audio_window_is_speed_times_longer(shards, samples):
    """The plan's view-2 PCM window holds s_a * N samples starting at the view's audio start; the
    start interval is that of the longest (speed-4) window, so only the too-short clip falls back."""
    n = SR  # audio_seconds 1.0
    for row in _plan_draws(shards, rounds=6):
        s_a = int(row["speed"][3])
        assert row["wave2"].shape == (s_a * n,)
        idx = samples[row["key"]].index
        if row["fallback"] == FALLBACK_NONE:
            start = int(np.floor((row["times"][3] - idx[shard_format.Index.AUDIO_OFFSET]) * SR + 0.5))
            reference = samples[row["key"]].audio[start:start + s_a * n]
            assert len(reference) == s_a * n  # the longest window fits, so no padding
            np.testing.assert_allclose(row["wave2"] / 32768.0, reference, atol=1e-4)
        else:
            assert samples[row["key"]].index[shard_format.Index.NUM_FRAMES] / 16 < 4.0


def _resample(wave: np.ndarray, n: int) -> np.ndarray:
    def graph():
        from nvidia.dali import fn, types

        return (_sped_to_view(fn.external_source(name="w", dtype=types.INT16, ndim=1), n, "cpu"),)

    pipe = build_pipeline(graph, device="cpu", batch_size=1, num_threads=1, device_id=None, seed=0, prefetch=1)
    pipe.feed_input("w", [np.round(wave * 32767).astype(np.int16)])
    return np.array(pipe.run()[0][0])


@pytest.mark.parametrize("speed", [1, 2, 3, 4])
def test_resampling_matches_numpy_on_a_chirp(speed: int):
    """s*N samples of a chirp (200 -> 1200 Hz, below the new Nyquist of 8000/s Hz) resampled to N
    equal the chirp evaluated (numpy) at the output samples' positions, (n + 0.5) s - 0.5 input
    samples (pixel centres), away from the window's edges."""
    n = 1600
    t = np.arange(speed * n) / SR
    duration = speed * n / SR
    chirp = 0.5 * np.sin(2 * np.pi * (200.0 * t + 0.5 * 1000.0 / duration * t * t))
    out = _resample(chirp, n)
    assert out.shape == (n,)
    tc = ((np.arange(n) + 0.5) * speed - 0.5) / SR
    expected = 0.5 * np.sin(2 * np.pi * (200.0 * tc + 0.5 * 1000.0 / duration * tc * tc))
    interior = slice(32, n - 32)
    np.testing.assert_allclose(out[interior], expected[interior], atol=1e-2)  # measured: 7e-3 at s=4
    if speed > 1:  # plain x[::s] would be off by the half-sample lead, far more than the tolerance
        assert np.abs(out[interior] - chirp[::speed][interior]).max() > 0.05


def test_resampling_removes_what_would_alias():
    """A 3 kHz tone sped up 4x lies above the new Nyquist (2 kHz at the original rate): the
    anti-aliased resampler filters it out (-40 dB) instead of folding it down to 1 kHz."""
    n = 1600
    tone = 0.5 * np.sin(2 * np.pi * 3000.0 * np.arange(4 * n) / SR)
    out = _resample(tone, n)[32:-32]
    assert np.sqrt(np.mean(tone[::4][32:-32] ** 2)) > 0.3  # decimation would alias it
    assert np.sqrt(np.mean(out ** 2)) < 0.02


def test_speeds_are_uniform_independent_and_tie_ties(shards):
    rows = _plan_draws(shards, rounds=100)
    speeds = np.stack([r["speed"] for r in rows])  # [300, 4]
    assert (speeds[:, :2] == 1).all()
    for col in (2, 3):
        counts = np.array([(speeds[:, col] == s).sum() for s in (1, 2, 3, 4)])
        assert counts.sum() == len(rows) and (counts > 45).all() and (counts < 105).all(), counts  # 75 expected
    equal = (speeds[:, 2] == speeds[:, 3]).mean()
    assert 0.15 < equal < 0.37  # independent draws agree 1/4 of the time
    tied = np.stack([r["speed"] for r in _plan_draws(shards, rounds=10, tie=True, video=[1, 2], audio=[2, 1])])
    assert (tied[:, 2] == tied[:, 3]).all() and set(tied[:, 2]) == {1.0, 2.0}


def test_speed_draws_resume_from_a_loader_checkpoint(shards):
    """The speeds are drawn in the checkpointed plan pipeline: a restored loader continues with the
    same speeds and the same frames as the uninterrupted one."""
    loader = build_train_loader(_config(shards), batch_size=2, seed=9)  # 3 samples: one batch per epoch
    list(iter(loader))
    state = loader.state_dict()
    expected = list(iter(loader)) + list(iter(loader))
    restored = build_train_loader(_config(shards), batch_size=2, seed=9)
    restored.load_state_dict(state)
    got = list(iter(restored)) + list(iter(restored))
    assert len(got) == len(expected) == 2
    for a, b in zip(expected, got):
        assert a["key"] == b["key"]
        assert torch.equal(a["speed"], b["speed"]) and torch.equal(a["v2"], b["v2"]) and torch.equal(a["a2"], b["a2"])


def test_view2_audio_pitch_rises_by_the_audio_speed(shards):
    """Through the whole loader (work graph, log-mel): the index clips' audio is a chirp of
    220 + 40 t Hz, so a2's strongest mel band sits at s_a times the chirp's frequency over its
    s_a-times longer window, relative to a1's (relaxation none: both views start together)."""
    import librosa

    centres = librosa.mel_frequencies(n_mels=82, fmin=0.0, fmax=SR / 2)[1:-1]  # the 80 bands' centres
    loader = build_train_loader(_config(shards), batch_size=2, seed=4)
    checked = set()
    for _ in range(6):
        for batch in loader:
            for b in range(2):
                if batch["fallback"][b] != FALLBACK_NONE:
                    continue
                s_a, t = int(batch["speed"][b, 3]), batch["times"][b, 1].item()
                peak1 = centres[batch["a1"][b, 0].mean(dim=1).argmax()]
                peak2 = centres[batch["a2"][b, 0].mean(dim=1).argmax()]
                expected = s_a * (220 + 40 * (t + s_a / 2)) / (220 + 40 * (t + 0.5))
                assert abs(peak2 / peak1 / expected - 1) < 0.15, (s_a, peak1, peak2, expected)
                checked.add(s_a)
    assert len(checked) >= 3
