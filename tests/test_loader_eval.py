"""Log-mel front end against librosa (real ESC-10 recordings) and the DALI evaluation loader."""

from __future__ import annotations

import csv
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from nvidia.dali import fn, types

from crisscross.preprocess.build import build_shards
from crisscross.shards.augment import KINETICS_MEAN, KINETICS_STD, LOG_EPS, LogMel, log_mel
from crisscross.shards.loader import build_eval_loader
from crisscross.shards.pipelines import build_pipeline
from crisscross.shards.reader import iter_samples
from crisscross.tools.demo_data import read_frame_index, reference_audio, write_index_clip

LOGMEL_ATOL = 1e-3  # natural-log units; measured max |DALI - librosa| is ~2e-4 (float32 FFT vs float64)
CLIPS = {"six": (6.0, "cat"), "four": (4.0, "dog"), "three": (2.75, "cat")}


def _dali_logmel(waves: list[np.ndarray]) -> list[np.ndarray]:
    mel = LogMel()

    def graph():
        wave = fn.external_source(source=lambda: waves, batch=True, dtype=types.FLOAT)
        return log_mel(wave, mel, len(waves[0]))

    pipe = build_pipeline(graph, device="cpu", batch_size=len(waves), num_threads=1, device_id=None, seed=0)
    (out,) = pipe.run()
    return [np.array(out[i]) for i in range(len(waves))]


def _librosa_logmel(wave: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=wave, sr=16000, n_fft=1024, hop_length=160, n_mels=80, fmin=0.0, power=2.0)
    return np.log(mel + LOG_EPS)


def test_logmel_matches_librosa_on_real_and_synthetic_audio(shared_data):
    files = sorted((shared_data / "esc10" / "audio").glob("*.flac"))[::97][:4]
    waves = []
    for path in files:
        audio, rate = sf.read(path, dtype="float32")
        assert rate == 16000
        waves.append(np.ascontiguousarray(audio[8000:40000]))  # 2 s from 0.5 s on
    waves.append(reference_audio(np.arange(32000) / 16000.0))
    waves.append((0.05 * np.random.default_rng(0).standard_normal(32000)).astype(np.float32))
    for wave, got in zip(waves, _dali_logmel(waves)):
        reference = _librosa_logmel(wave)[:, :200]
        assert got.shape == (80, 200)  # 2 s, hop 160 -> 200 frames
        np.testing.assert_allclose(got, reference, atol=LOGMEL_ATOL, rtol=0)


# ----------------------------------------------------------------------------- eval loader


@pytest.fixture(scope="session")
def labelled_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loader_eval")
    src = root / "src"
    src.mkdir()
    with open(src / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for name, (seconds, label) in CLIPS.items():
            write_index_clip(src / f"{name}.mp4", seconds=seconds, fps=16, size=(128, 128), codec="mjpeg")
            writer.writerow([f"{name}.mp4", label, "test"])
    build_shards(src / "manifest.csv", root / "shards", name="eval", progress=False, samples_per_shard=2)
    return root / "shards"


@pytest.fixture(scope="session")
def eval_samples(labelled_shards) -> dict:
    return {s.key: s for s in iter_samples(labelled_shards, video=False)}


def _frame_indices(video: torch.Tensor) -> list[int]:
    """[3,T,H,W] normalized -> the index shown by each frame."""
    mean = torch.tensor(KINETICS_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(KINETICS_STD).view(3, 1, 1, 1)
    frames = ((video * std + mean) * 255.0).permute(1, 2, 3, 0).numpy()
    return [read_frame_index(f) for f in frames]


def test_uniform_clips_cover_the_clip_and_every_sample_comes_once(labelled_shards, eval_samples):
    loader = build_eval_loader(labelled_shards, clips_per_sample=3, frames=4, crop=112, audio_seconds=1.0, batch_size=2)
    assert len(loader) == 2
    keys, labels = [], []
    for batch in loader:
        count = len(batch["key"])
        assert batch["video"].shape == (count, 3, 3, 4, 112, 112)
        assert batch["audio"].shape == (count, 3, 1, 80, 100)
        for b, key in enumerate(batch["key"]):
            idx = eval_samples[key].index
            frames, audio_seconds = idx[0], idx[2] / idx[3]
            hi = min(frames / 16 - 0.25, audio_seconds - 1.0)  # last start where both windows fit
            for k in range(3):
                start = int(np.floor(k * hi / 2 * 16 + 0.5))
                assert _frame_indices(batch["video"][b, k]) == [start + j for j in range(4)]
        keys += batch["key"]
        labels += batch["label"]
        assert batch["label_index"].dtype == torch.long
    assert sorted(keys) == sorted(eval_samples)  # each sample exactly once
    assert sorted(labels) == ["cat", "cat", "dog"]
    by_source = {Path(eval_samples[k].meta["source"]).stem: lab for k, lab in zip(keys, labels)}
    assert by_source == {name: label for name, (_, label) in CLIPS.items()}


def test_random_clips_differ_by_seed_and_stay_inside(labelled_shards):
    def starts(seed):
        loader = build_eval_loader(labelled_shards, clips_per_sample=5, sampling="random", frames=2, crop=112,
                                   modalities=("video",), audio_seconds=1.0, batch_size=3, seed=seed)
        (batch,) = list(loader)
        assert "audio" not in batch
        return {key: [_frame_indices(batch["video"][b, k])[0] for k in range(5)] for b, key in enumerate(batch["key"])}

    first, again, other = starts(1), starts(1), starts(2)
    assert first == again and first != other
    assert all(0 <= s for v in first.values() for s in v)


def test_audio_only_and_linear_augmentation(labelled_shards):
    plain = list(build_eval_loader(labelled_shards, clips_per_sample=2, modalities=("audio",), audio_seconds=2.0, batch_size=3))
    (batch,) = plain
    assert set(batch) == {"audio", "key", "label", "label_index"}
    assert batch["audio"].shape == (3, 2, 1, 80, 200)
    linear = list(build_eval_loader(labelled_shards, clips_per_sample=2, frames=4, crop=64, augment="linear",
                                    audio_seconds=2.0, batch_size=3, seed=3))
    (aug,) = linear
    assert aug["video"].shape == (3, 2, 3, 4, 64, 64) and aug["audio"].shape == batch["audio"].shape
    assert not torch.allclose(aug["audio"], batch["audio"])
    # linear-eval clips of one sample get independent augmentation draws
    assert not torch.allclose(aug["video"][:, 0], aug["video"][:, 1])
    with pytest.raises(ValueError, match="augment"):
        build_eval_loader(labelled_shards, augment="strong")
