"""Decode/resample/align against known content: index clips (frame k shows k), a chirp whose
phase tells the time, a variable-frame-rate file, rotation metadata and real recordings."""

from __future__ import annotations

import fractions
import io
import subprocess

import av
import numpy as np
import pytest

from crisscross.preprocess.media import MediaConfig, decode_source, output_size
from crisscross.tools.demo_data import (
    read_frame_index,
    reference_audio,
    render_index_frame,
    write_av_file,
    write_index_clip,
)

CFG = MediaConfig()


def _frames(mp4: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(mp4)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _shown_index(times: np.ndarray, instant: float) -> int:
    """Index of the source frame on screen at ``instant``: the last one presented at or before it."""
    return int(np.searchsorted(times, instant + 1e-6, side="right") - 1)


def _lag_samples(x: np.ndarray, t_first: float, rate: int, search: int = 40) -> int:
    """Shift (in samples) at which ``x`` best matches the reference chirp started at t_first."""
    scores = [np.dot(x, reference_audio(t_first + (np.arange(x.size) + lag) / rate)) for lag in range(-search, search + 1)]
    return int(np.argmax(scores)) - search


@pytest.mark.parametrize("codec,fps,span", [("h264", 25, (0.0, None)), ("h264", 25, (1.3, 2.6)),
                                            ("mjpeg", 30, (0.7, None)), ("vp9", 24, (0.0, 1.5))])
def test_frame_k_is_the_source_frame_shown_at_t0_plus_k_over_16(tmp_path, codec, fps, span):
    path = write_index_clip(tmp_path / f"ix.{'webm' if codec == 'vp9' else 'mp4'}", seconds=3.0, fps=fps,
                            codec=codec, with_audio=False)
    clip = decode_source(str(path), [span], CFG).clips[0]
    got = [read_frame_index(f) for f in _frames(clip.video_mp4)]
    source_times = np.arange(int(3.0 * fps)) / fps
    t0 = span[0] + clip.video_offset
    want = [_shown_index(source_times, t0 + k / 16) for k in range(len(got))]
    assert got == want
    # and the pixels: frame k is the source picture of that index, scaled to 112 px high
    from PIL import Image

    frames = _frames(clip.video_mp4)
    for k in (0, len(frames) // 2, len(frames) - 1):
        assert frames[k].shape == (112, 150, 3)  # 160x120 -> short side 112, even width
        source = Image.fromarray(render_index_frame(want[k], 160, 120)).resize((150, 112), Image.BOX)
        assert np.abs(frames[k].astype(int) - np.asarray(source, dtype=int)).mean() < 6  # codec losses only
    end = span[1] if span[1] is not None else 3.0
    assert len(got) == int(np.ceil((end - t0) * 16 - 1e-6))  # the whole span, no more
    assert clip.video_offset == 0.0


def test_variable_frame_rate_source_is_resampled_by_presentation_time(tmp_path):
    rng = np.random.default_rng(3)
    gaps_ms = rng.choice([10, 20, 33, 50, 90, 150], size=60)  # 10 ms .. 150 ms between frames
    pts_ms = np.concatenate([[0], np.cumsum(gaps_ms[:-1])])
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=100)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuvj420p"
        stream.time_base = fractions.Fraction(1, 1000)
        for k, pts in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(render_index_frame(k, 160, 120), format="rgb24").reformat(format="yuvj420p")
            frame.pts, frame.time_base = int(pts), fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    clip = decode_source(str(path), [(0.0, None)], CFG).clips[0]
    got = [read_frame_index(f) for f in _frames(clip.video_mp4)]
    want = [_shown_index(pts_ms / 1000.0, k / 16) for k in range(len(got))]
    assert got == want
    assert len(set(got)) < len(pts_ms)  # some frames dropped (bursts) ...
    assert len(got) > len(set(got))  # ... and some repeated (gaps): a real VFR case


def test_late_audio_keeps_its_offset_and_is_sample_accurate(tmp_path):
    path = write_index_clip(tmp_path / "late.mp4", seconds=3.0, fps=25, sample_rate=44100, audio_delay=0.5)
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        audio_start = float(stream.start_time * stream.time_base)  # 0.5 s minus the AAC priming
    for span in [(0.0, None), (1.0, 2.5)]:
        clip = decode_source(str(path), [span], CFG).clips[0]
        assert clip.video_offset == 0.0
        if span[0] == 0.0:
            assert clip.audio_offset == pytest.approx(audio_start, abs=1 / 16000)
            assert abs(clip.audio_offset - 0.5) < 1 / 16  # within one video frame of the intended delay
        else:
            assert 0 <= clip.audio_offset < 1 / 16000
        audio = clip.audio_pcm.astype(np.float32) / 32768
        t_first = span[0] + clip.audio_offset
        # the chirp's phase gives the time: our samples sit where the index says, to ~1 ms
        # (what remains is the AAC codec's own delay, present in the source's decoded samples)
        for start in (1000, audio.size - 5000):
            lag = _lag_samples(audio[start:start + 4000], t_first + start / 16000, 16000)
            assert abs(lag) <= 16
        # video frame k and audio sample n share one timeline: frame 16 (1 s later) is source frame 25 ahead
        frames = _frames(clip.video_mp4)
        assert read_frame_index(frames[16]) - read_frame_index(frames[0]) == 25


def test_audio_matches_an_independent_resampling_of_a_real_recording(shared_data):
    from scipy.signal import resample_poly

    path = shared_data / "videos" / "torchcodec" / "nasa_13013.mp4"  # AAC 8 kHz stereo, 2 audio streams
    clip = decode_source(str(path), [(0.0, None)], CFG).clips[0]
    with av.open(str(path)) as c:
        native = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1).mean(axis=0)
    reference = resample_poly(native, 2, 1)  # 8 kHz -> 16 kHz, polyphase FIR (scipy, not FFmpeg/soxr)
    ours = clip.audio_pcm.astype(np.float64) / 32768
    n = min(ours.size, reference.size)
    assert abs(ours.size - reference.size) <= 1
    err = ours[100:n - 100] - reference[100:n - 100]
    assert np.sqrt(np.mean(err ** 2)) < 0.02 * np.sqrt(np.mean(reference ** 2))
    assert np.corrcoef(ours[100:n - 100], reference[100:n - 100])[0, 1] > 0.999


def test_16khz_flac_passes_through_bit_exact(shared_data):
    import soundfile

    path = shared_data / "esc10" / "audio" / "1-100032-A-0.flac"
    clip = decode_source(str(path), [(0.0, None)], CFG).clips[0]
    expected, rate = soundfile.read(str(path), dtype="int16")
    assert rate == 16000 and clip.video_mp4 is None
    np.testing.assert_array_equal(clip.audio_pcm, expected)


def test_rotation_metadata_is_applied(tmp_path):
    import imageio_ffmpeg

    plain = tmp_path / "plain.mp4"
    band = np.zeros((32, 64, 3), np.uint8)
    band[:, :12] = 255  # a white band on the left
    write_av_file(plain, [band] * 5, None, fps=10, sample_rate=16000, video_codec="mjpeg")
    rotated = tmp_path / "rotated.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-display_rotation", "90",
                    "-i", str(plain), "-c", "copy", str(rotated)], check=True)
    media = decode_source(str(rotated), [(0.0, None)], MediaConfig(short_side=32))
    frame = _frames(media.clips[0].video_mp4)[0]
    assert media.info["rotation"] == 90
    assert frame.shape == (64, 32, 3)  # portrait after rotation
    rows = frame[..., 0].mean(axis=1)
    assert rows[-10:].min() > 200 and rows[:40].max() < 40  # displayed upright: the band is at the bottom


def test_output_size_keeps_aspect_and_even_sides():
    assert output_size(1280, 720, 112) == (200, 112)
    assert output_size(360, 288, 112) == (140, 112)
    assert output_size(720, 1280, 256) == (256, 456)


def test_seeking_to_late_clips_gives_the_same_clips_as_decoding_from_the_start(shared_data, monkeypatch):
    from crisscross.preprocess import media

    path = str(shared_data / "videos" / "iscc_samples" / "spiral_sessions_demo.mp4")  # 60 s, H.264 + AAC 22.05 kHz
    spans = [(40.0, 44.0), (52.0, 56.0)]
    seeked = decode_source(path, spans, CFG).clips
    monkeypatch.setattr(media, "SEEK_MIN_START", 1e9)  # force a decode from 0
    from_start = decode_source(path, spans, CFG).clips
    for a, b in zip(seeked, from_start):
        assert a.video_mp4 == b.video_mp4 and a.num_frames == 64
        assert a.audio_offset == b.audio_offset == 0.0 and a.audio_pcm.size == b.audio_pcm.size == 64000
        assert np.abs(a.audio_pcm.astype(int) - b.audio_pcm.astype(int)).max() <= 1  # float rounding only


def test_non_square_pixels_are_scaled_to_the_displayed_shape(tmp_path):
    path = tmp_path / "anamorphic.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuvj420p"
        stream.codec_context.sample_aspect_ratio = fractions.Fraction(2, 1)  # each pixel twice as wide
        for k in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 100, np.uint8), format="rgb24").reformat(format="yuvj420p")
            frame.pts = k
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(path)) as c:
        assert c.streams.video[0].sample_aspect_ratio == 2  # the container kept it
    media = decode_source(str(path), [(0.0, None)], MediaConfig(short_side=32))
    assert _frames(media.clips[0].video_mp4)[0].shape == (32, 64, 3)  # displayed 2:1, square pixels out
