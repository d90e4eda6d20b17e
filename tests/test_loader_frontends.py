"""Audio front ends (``data.audio_frontend``): AVID's log power spectrogram and GDT's log filterbank
against librosa/numpy references on a chirp and noise; config checks; the front end recorded in
backbones.json "input" and used by the evaluation loader; a demo preset trains with one."""

from __future__ import annotations

import json
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
from nvidia.dali import fn, types

from crisscross.evaluate.config import EvalConfig, EvalLoaderConfig
from crisscross.shards.augment import LOG_EPS, LogMel, audio_features
from crisscross.shards.loader import LoaderConfig, ViewSpec, build_eval_loader
from crisscross.shards.pipelines import build_pipeline
from crisscross.train.export import load_encoder_input

SR, N = 16000, 32000  # 2 s at 16 kHz, hop 160 -> 200 frames
LOGSPEC_ATOL = 0.05  # dB; measured max |DALI - librosa| 0.029 dB on the chirp's weakest kept bins (float32)
LOGFBANK_ATOL = 3e-3  # natural-log units; measured 1.1e-3 (257 bands), 6e-5 (40 bands)


def _waves() -> list[np.ndarray]:
    t = np.arange(N) / SR
    chirp = 0.5 * np.sin(2 * np.pi * (100.0 * t + (7000.0 - 100.0) / 4.0 * t**2))  # 100 Hz -> 7 kHz in 2 s
    noise = 0.05 * np.random.default_rng(0).standard_normal(N)
    return [chirp.astype(np.float32), noise.astype(np.float32)]


def _dali(mel: LogMel, waves: list[np.ndarray]) -> list[np.ndarray]:
    def graph():
        wave = fn.external_source(source=lambda: waves, batch=True, dtype=types.FLOAT)
        return audio_features(wave, mel, N)

    pipe = build_pipeline(graph, device="cpu", batch_size=len(waves), num_threads=1, device_id=None, seed=0)
    (out,) = pipe.run()
    return [np.array(out[i]) for i in range(len(waves))]


def _power(wave: np.ndarray, n_fft: int, window_length: int, window: str) -> np.ndarray:
    stft = librosa.stft(wave.astype(np.float64), n_fft=n_fft, win_length=window_length, hop_length=160,
                        window=window, center=True, pad_mode="constant")
    return (np.abs(stft) ** 2)[:, : N // 160]


def test_logspec_matches_librosa_power_to_db():
    waves = _waves()
    for wave, got in zip(waves, _dali(LogMel(n_fft=512, frontend="logspec"), waves)):
        want = librosa.power_to_db(_power(wave, 512, 512, "hann"), ref=1.0, amin=1e-10, top_db=100.0)
        assert got.shape == (257, 200)
        assert got.min() >= got.max() - 100.0 - 1e-3  # the top_db floor is the sample's own maximum
        np.testing.assert_allclose(got, want, atol=LOGSPEC_ATOL, rtol=0)


@pytest.mark.parametrize("n_mels", [40, 257])
def test_logfbank_matches_numpy_reference(n_mels):
    waves = _waves()
    basis = librosa.filters.mel(sr=SR, n_fft=512, n_mels=n_mels, fmin=0.0, htk=True, norm=None)
    for wave, got in zip(waves, _dali(LogMel(n_fft=512, n_mels=n_mels, frontend="logfbank"), waves)):
        emphasised = np.append(wave[0], wave[1:] - 0.97 * wave[:-1])  # pre-emphasis, first sample kept
        want = np.log(basis @ _power(emphasised, 512, 320, "boxcar") + LOG_EPS)  # 20 ms rectangular window
        assert got.shape == (n_mels, 200)
        np.testing.assert_allclose(got, want, atol=LOGFBANK_ATOL, rtol=0)
    # the pre-emphasis and the window matter: without them the reference is far off
    plain = np.log(basis @ _power(waves[0], 512, 512, "hann") + LOG_EPS)
    assert np.abs(_dali(LogMel(n_fft=512, n_mels=n_mels, frontend="logfbank"), waves)[0] - plain).max() > 0.5


def test_frontend_config_checks():
    with pytest.raises(ValueError, match="audio_frontend"):
        LoaderConfig(audio_frontend="mfcc")
    with pytest.raises(ValueError, match="audio_frontend"):
        EvalLoaderConfig(audio_frontend="spec")
    with pytest.raises(ValueError, match="20 ms window"):
        LogMel(n_fft=256, frontend="logfbank")  # 320 samples do not fit a 256-point FFT
    assert LogMel(n_fft=512, frontend="logspec").bins == 257 and LogMel(n_mels=40, frontend="logfbank").bins == 40
    assert not LogMel(frontend="logfbank").normalized and LogMel(frontend="logspec").normalized


def test_frontend_recorded_in_input_and_used_by_evaluation():
    spec = ViewSpec(n_fft=512, audio_frontend="logspec").to_input(16.0, 16000)
    assert spec["audio"]["audio_frontend"] == "logspec"
    assert ViewSpec.from_input(spec).audio_frontend == "logspec"
    old = json.loads(json.dumps(spec))
    del old["audio"]["audio_frontend"]  # an export written before front ends existed
    assert ViewSpec.from_input(old).audio_frontend == "logmel"
    cfg = EvalConfig()
    cfg.resolve_input(spec)
    view = cfg.loader_args()["view"]
    assert (view.audio_frontend, view.n_fft) == ("logspec", 512)
    cfg = EvalConfig(loader=EvalLoaderConfig(audio_frontend="logmel"))  # a stated front end wins
    cfg.resolve_input(spec)
    assert cfg.loader_args()["view"].audio_frontend == "logmel"


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory, demo_shards_builder) -> Path:
    return demo_shards_builder(tmp_path_factory.mktemp("demo"), num_classes=2, clips_per_class=4, seconds=4.0)


@pytest.mark.slow
def test_demo_preset_trains_with_logspec_and_export_evaluates_with_it(tmp_path, demo_shards):
    from crisscross.train.config import resolve_config
    from crisscross.train.trainer import train

    run_dir = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        config = resolve_config("avid_demo", [
            f"run.dir={run_dir}", f"data.shards={demo_shards}", "run.max_steps=2", "run.epochs=2",
            "run.progress=false", "run.tensorboard=false", "run.log_every=1", "data.audio_frontend=logspec",
            "data.n_fft=512", "data.logmel_mean=-30.76", "data.logmel_std=28.58"])
        summary = train(config)
    finally:
        torch.set_num_threads(threads)
    assert summary["status"] == "completed" and summary["step"] == 2
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert records and all(np.isfinite(r["loss/total"]) for r in records)
    recorded = load_encoder_input(run_dir / "export")
    assert recorded["audio"]["audio_frontend"] == "logspec" and recorded["audio"]["n_fft"] == 512
    cfg = EvalConfig()
    cfg.resolve_input(recorded, source=str(run_dir / "export"))
    loader = build_eval_loader(demo_shards, **cfg.loader_args(), modalities=("audio",), clips_per_sample=1, batch_size=2)
    batch = next(iter(loader))
    frames = int(cfg.audio_seconds * 16000) // 160
    assert tuple(batch["audio"].shape[-3:]) == (1, 257, frames)  # the spectrogram, not 80 mel bands
