"""The demo-clip generator makes real, decodable files whose content is what it claims."""

from __future__ import annotations

import csv

import av
import numpy as np
import pytest

from crisscross.tools import demo_data


def _decode(path):
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        audio_frames = list(container.decode(audio=0))
    audio = np.concatenate([f.to_ndarray().reshape(-1) for f in audio_frames])
    return frames, audio, audio_frames[0].time, audio_frames[0].sample_rate


@pytest.mark.parametrize("codec,suffix", [("h264", ".mp4"), ("mjpeg", ".mp4"), ("vp9", ".webm")])
def test_index_clip_frames_encode_their_index(tmp_path, codec, suffix):
    path = demo_data.write_index_clip(tmp_path / f"clip{suffix}", seconds=1.2, fps=25, codec=codec)
    frames, _, _, _ = _decode(path)
    assert [demo_data.read_frame_index(f) for f in frames] == list(range(30))


def test_index_clip_audio_follows_reference_with_delay(tmp_path):
    path = demo_data.write_index_clip(tmp_path / "late.mp4", seconds=2.0, audio_delay=0.5)
    _, audio, start, rate = _decode(path)
    assert rate == 16000
    # decoded timestamps are honest: sample n is heard at start + n/rate (AAC priming included)
    n = np.arange(4000, 12000)
    expected = demo_data.reference_audio(start + n / rate)
    corr = np.corrcoef(audio[n], expected)[0, 1]
    assert corr > 0.99
    # and the first real content sits at the requested delay: silence before it
    lead = int(round((0.5 - start) * rate))
    assert np.abs(audio[: max(lead - 64, 0)]).max(initial=0.0) < 0.02


def test_read_frame_index_survives_rescaling():
    frame = demo_data.render_index_frame(2731, 160, 120)
    small = frame[::2, ::2]  # crude downscale
    assert demo_data.read_frame_index(small) == 2731


def test_class_clips_sound_events_line_up_with_bounces(tmp_path):
    manifest = demo_data.generate_demo_clips(tmp_path, num_classes=2, clips_per_class=2, seconds=3.0, sample_rate=16000)
    rows = list(csv.DictReader(open(manifest)))
    assert [r["label"] for r in rows] == ["class0", "class0", "class1", "class1"]
    assert {r["split"] for r in rows} == {"train", "test"}
    frames, audio, start, rate = _decode(tmp_path / rows[0]["path"])
    assert len(frames) == 75
    # the ball is lowest (largest centroid row) at bounces; the click is heard there: the audio's
    # response to the click (a matched filter at the clip's pitch) peaks at each bounce, well above
    # its response in the background noise between bounces
    rng = np.random.default_rng(0)
    spec = demo_data.draw_clip_spec(0, rng)  # first clip of the manifest uses the seed's first draw
    bounce_times = demo_data._bounce_times(3.0, spec)
    assert len(bounce_times) >= 3
    k = np.arange(int(0.06 * rate))
    template = np.exp(-2j * np.pi * spec.pitch * k / rate - k / (0.012 * rate))

    def response(first: int, last: int) -> float:
        return max(abs(np.dot(audio[o : o + len(k)], template)) for o in range(first, last, 4))

    for bt in bounce_times[1:-1]:
        n = int(round((bt - start) * rate))
        assert response(n - 80, n + 80) > 4 * response(n - 2400, n - 1600)


def test_pitch_is_a_partial_cue_and_loudness_none():
    """Each class's pitch band overlaps its neighbours': the best pitch-only rule (nearest band
    centre in log pitch) names the class of only about half the clips of 4 classes; click gain
    and noise level do not depend on the class."""
    rng = np.random.default_rng(3)
    specs = [demo_data.draw_clip_spec(label, rng) for label in range(4) for _ in range(500)]
    labels = np.array([s.label for s in specs])
    log_pitch = np.log([s.pitch for s in specs])
    centres = np.log(demo_data.CLASS_PITCHES[:4])
    nearest = np.abs(log_pitch[:, None] - centres[None, :]).argmin(axis=1)
    accuracy = float((nearest == labels).mean())
    assert 0.35 < accuracy < 0.65, accuracy  # 0.5 expected; pitch alone cannot separate the classes
    order = np.argsort(centres)
    for low, high in zip(order[:-1], order[1:]):  # neighbouring bands overlap
        assert log_pitch[labels == low].max() > log_pitch[labels == high].min()
    for field in ("gain", "noise"):
        values = np.array([getattr(s, field) for s in specs])
        means = [values[labels == c].mean() for c in range(4)]
        assert max(means) - min(means) < 0.15 * (values.max() - values.min()), field


def test_labels_drive_rhythm_not_colour():
    rng = np.random.default_rng(1)
    specs = [demo_data.draw_clip_spec(label, rng) for label in (0, 0, 0, 1, 1, 1)]
    periods = np.array([s.period for s in specs])
    assert periods[:3].max() < periods[3:].min()  # class 0 bounces faster than class 1
    colours = {s.background_rgb for s in specs}
    assert len(colours) == 6  # colours are per-clip nuisance, not class cues


def test_hop_height_follows_the_period_and_the_ball_is_brighter_than_the_background():
    rng = np.random.default_rng(2)
    specs = [demo_data.draw_clip_spec(label, rng) for label in range(4) for _ in range(5)]
    heights = [demo_data.bounce_amplitude(s.period) for s in specs]
    # class k's hops are all lower than class k+1's: the rhythm is visible as a height too
    for k in range(3):
        assert max(heights[5 * k : 5 * k + 5]) < min(heights[5 * k + 5 : 5 * k + 10])
    assert all(0.0 < h <= 1.0 for h in heights)
    for spec in specs:  # one contrast polarity: every channel of the ball is brighter
        assert min(spec.ball_rgb) > max(spec.background_rgb)
    frame = demo_data.render_class_frame(0.3, specs[0], 160, 120)
    bright = frame.sum(axis=2) > sum(specs[0].background_rgb) + 30
    radius = specs[0].radius
    assert abs(bright.sum() - np.pi * radius**2) < 0.2 * np.pi * radius**2  # the whole ball is drawn
