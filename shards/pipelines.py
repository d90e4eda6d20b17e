"""DALI graphs: training (two augmented A/V views per clip) and evaluation (K clips per sample).

Training is split in two pipelines per rank, because DALI 2.4 cannot checkpoint a graph that
contains a video decoder and because a video decoder's cost grows with the clip:

- ``plan_graph`` (checkpointable, CPU): ``fn.readers.webdataset`` (rank's shard, shuffling) ->
  ``index.npy`` parsed by DALI arithmetic -> t1/t2 per relaxation mode (views.py) -> frame
  indices and the two int16 PCM windows (``fn.slice``: only the window is touched) -> every
  random augmentation parameter (``packed_draws``: one vector per sample laid out by the recorded
  ``DrawSpec`` list).
- ``work_graph`` (stateless given its inputs; CPU or GPU): the planned JPEG frames (cut out of
  the MP4 by the loader) -> ``fn.decoders.image`` (``mixed`` = nvJPEG on a GPU) -> views ->
  augmentations with the planned parameters -> log-mel.

A checkpoint of the plan pipeline therefore restores everything random. Evaluation is a single
pipeline (``eval_graph``, no checkpointing needed) with ``fn.decoders.video(frames=...)``.
``device="cpu"`` runs everything on the CPU (``device_id=None``); ``device="gpu"`` decodes with
the ``mixed`` backend and runs every later operator on the GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali.pipeline import DataNode, Pipeline, pipeline_def

from crisscross.shards import format as shard_format
from crisscross.shards.augment import (
    AudioAugment,
    DrawSpec,
    LiveDraws,
    LogMel,
    RecordedDraws,
    VideoAugment,
    audio_power,
    augment_audio,
    augment_audio_power,
    augment_video,
    make_random,
    packed_draws,
    union_powers,
    union_supported,
)
from crisscross.shards.views import (
    ClipSpan,
    ViewGeometry,
    clip_span,
    parse_index,
    sample_view_starts,
    start_frame,
    start_sample,
)

READER_NAME = "reader"
AUDIO_EXTS = {"pcm": shard_format.AUDIO_PCM_EXT, "flac": shard_format.AUDIO_FLAC_EXT}
KEY_BYTES = 256  # source_info ("shard.tar:offset:key.video.mp4") is padded to the batch max


@dataclass(frozen=True)
class ReaderSpec:
    """Which shards a pipeline reads and how (one rank's view of the dataset)."""

    paths: tuple[str, ...]
    index_paths: tuple[str, ...] | None = None
    shard_id: int = 0
    num_shards: int = 1
    shuffle: bool = False
    shuffle_buffer: int = 256
    # "error": a sample lacking a component stops with an error; "skip": such samples are dropped.
    missing_components: str = "skip"
    audio_format: str = "pcm"  # dataset.json build.audio_format: which audio member to read (pcm | flac)

    @property
    def audio_ext(self) -> str:
        if self.audio_format not in AUDIO_EXTS:
            raise ValueError(f"audio_format must be one of {sorted(AUDIO_EXTS)}, not {self.audio_format!r}")
        return AUDIO_EXTS[self.audio_format]


@dataclass(frozen=True)
class SpeedSpec:
    """SvaCLR's speed co-augmentation of view 2 (view 1 stays at speed 1): integer speeds drawn
    uniformly per sample from ``video`` and ``audio`` (independently; ``tie``: one draw for both).
    Video at speed s takes every ``s * stride``-th shard frame; audio takes a window s times longer
    and resamples it to the view's sample count (anti-aliased, ``_sped_to_view``), so its pitch
    rises by s, as torchaudio's Resample in the paper)."""

    video: tuple[int, ...] = (1, 2, 3, 4)
    audio: tuple[int, ...] = (1, 2, 3, 4)
    tie: bool = False


@dataclass(frozen=True)
class TrainGraphSpec:
    geometry: ViewGeometry = field(default_factory=ViewGeometry)
    crop: int = 112
    relaxation: str = "mild"
    extreme_gap: float = 3.0
    view_alignment: str = "paper"  # paper | official (views.py)
    video_aug: VideoAugment = field(default_factory=VideoAugment)
    audio_aug: AudioAugment = field(default_factory=AudioAugment)
    mel: LogMel = field(default_factory=LogMel)
    speed: SpeedSpec | None = None  # None: no speed views (the graph is exactly the one without the option)


@dataclass(frozen=True)
class EvalGraphSpec:
    clips: int = 10
    sampling: str = "uniform"  # uniform | random
    geometry: ViewGeometry = field(default_factory=ViewGeometry)
    crop: int = 112
    video: bool = True
    audio: bool = True
    video_aug: VideoAugment = field(default_factory=VideoAugment.disabled)
    audio_aug: AudioAugment = field(default_factory=AudioAugment.disabled)
    mel: LogMel = field(default_factory=LogMel)


def _reader(spec: ReaderSpec, exts: list[str]) -> list[DataNode]:
    kwargs = {}
    if spec.index_paths is not None:
        kwargs["index_paths"] = list(spec.index_paths)
    outputs = fn.readers.webdataset(
        paths=list(spec.paths),
        ext=exts,
        name=READER_NAME,
        shard_id=spec.shard_id,
        num_shards=spec.num_shards,
        random_shuffle=spec.shuffle,
        initial_fill=spec.shuffle_buffer,
        pad_last_batch=True,
        missing_component_behavior=spec.missing_components,
        **kwargs,
    )
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _key_bytes(encoded: DataNode) -> DataNode:
    """``source_info`` of a component as padded uint8 ("path:offset:key.ext"); the loader parses it."""
    return fn.pad(fn.get_property(encoded, key="source_info"), axes=[0], shape=[KEY_BYTES], fill_value=0)


def _frame_list(span: ClipSpan, first: DataNode, geo: ViewGeometry, speed: DataNode | None = None) -> DataNode:
    """``first + speed * stride * [0..T)`` clamped to the clip (the last frame repeats past the
    end); ``speed``: a per-sample integer-valued float (None: 1)."""
    offsets = types.Constant(np.arange(geo.frames, dtype=np.int32) * geo.stride)
    if speed is not None:
        offsets = offsets * fn.cast(speed, dtype=types.INT32)
    frames = first + offsets
    return fn.cast(dmath.min(frames, fn.cast(dmath.max(span.num_frames - 1.0, 0.0), dtype=types.INT32)), dtype=types.INT32)


def _decode(video: DataNode, frames: DataNode, device: str, decoder: str | None = None) -> DataNode:
    """Decode the listed frames. ``decoder``: ``mixed`` (NVDEC) or ``cpu`` (FFmpeg); by default
    the graph's device. CPU-decoded frames of a GPU graph move to the GPU for what follows
    (the evaluation loader chooses ``cpu`` where NVDEC does not take the shards' MJPEG)."""
    decoder = decoder or ("mixed" if device == "gpu" else "cpu")
    decoded = fn.decoders.video(video, device=decoder, frames=frames)
    return decoded.gpu() if device == "gpu" and decoder == "cpu" else decoded


def _audio_window(pcm: DataNode, first: DataNode, num_samples: int | DataNode) -> DataNode:
    """Cut ``num_samples`` int16 samples (a constant, or a per-sample int64) at ``first`` out of
    the raw PCM (zeros past the end). Only the window is copied, so the cost does not grow with the clip."""
    length = types.Constant(np.int64(num_samples)) if isinstance(num_samples, int) else num_samples
    return fn.slice(pcm, first, length, axes=[0], out_of_bounds_policy="pad", fill_values=0)


def _to_float(pcm_window: DataNode, device: str) -> DataNode:
    """int16 -> float32 in [-1, 1), on the device that runs the audio graph."""
    if device == "gpu":
        pcm_window = pcm_window.gpu()
    return fn.cast(pcm_window, dtype=types.FLOAT) * (1.0 / 32768.0)


def _pcm(audio_bytes: DataNode, audio_format: str) -> DataNode:
    """The sample's whole int16 mono track: raw PCM is reinterpreted in place; FLAC is decoded by
    DALI's audio decoder (CPU; libsndfile), which reads the whole clip before the window is cut."""
    if audio_format == "flac":
        decoded, _rate = fn.decoders.audio(audio_bytes, dtype=types.INT16, downmix=True)
        return decoded
    return fn.reinterpret(audio_bytes, dtype=types.INT16)


PLAN_DATA = ("video", "frames", "wave1", "wave2")  # plan outputs that feed the work stage
PLAN_META = ("key", "times", "fallback", "speed")  # plan -> loader
PLAN_OUTPUTS = (*PLAN_DATA, *PLAN_META, "draws")  # plan_graph's named outputs, in order


def split_plan(outputs: Sequence[Any], *, packed: bool = True) -> tuple[dict[str, Any], Any]:
    """plan_graph's outputs by name (``PLAN_OUTPUTS``), and the packed draws (``[B, K]``, laid out
    by ``augment.draw_layout`` of the recorded specs), so that no reader counts offsets.
    ``packed=False`` (the version-1 graph): the draws are one output each, packed here."""
    if packed:
        named = dict(zip(PLAN_OUTPUTS, outputs))
        return named, named["draws"]
    named = dict(zip(PLAN_OUTPUTS[:-1], outputs))
    separate = outputs[len(PLAN_OUTPUTS) - 1:]
    batch = len(named["key"])
    named["draws"] = np.concatenate([d.as_array().reshape(batch, -1) for d in separate], axis=1) if separate else None
    return named, named["draws"]


def work_graph(spec: TrainGraphSpec, draws: RecordedDraws, device: str, *, audio_union: bool | None = None) -> tuple[DataNode, ...]:
    """Training stage 2 (stateless given its inputs): decode the planned frames (one JPEG per
    external source ``jpeg{j}``, j < 2T, cut out of the MP4 by the loader, see mjpeg_frames.py),
    stack them into the two views, augment with the planned draws.
    Outputs v1, v2 [3,T,crop,crop] and a1, a2 [1,80,F]. ``audio_union`` (default
    ``uses_audio_union(spec)``): overlapping audio views share one STFT (inputs ``UNION_INPUTS``)."""
    geo = spec.geometry
    decoder_device = "mixed" if device == "gpu" else "cpu"
    frames = [
        fn.decoders.image(fn.external_source(name=f"jpeg{j}", dtype=types.UINT8, ndim=1, no_copy=True),
                          device=decoder_device, output_type=types.RGB)
        for j in range(2 * geo.frames)
    ]
    draws.register_frames(frames)  # crop boxes read the frame sizes from the JPEG headers
    views_v = [
        augment_video(frames[i * geo.frames : (i + 1) * geo.frames], spec.video_aug, spec.crop, draws)  # resized, then stacked
        for i in (0, 1)
    ]
    waves = []
    for name in ("wave1", "wave2"):
        pcm = fn.external_source(name=name, dtype=types.INT16, ndim=1, no_copy=True)
        waves.append(_sped_to_view(pcm, geo.audio_samples, device) if spec.speed and name == "wave2" else _to_float(pcm, device))
    if uses_audio_union(spec) if audio_union is None else audio_union:
        union = _to_float(fn.external_source(name=UNION_INPUTS[0], dtype=types.INT16, ndim=1, no_copy=True), device)
        shift = fn.external_source(name=UNION_INPUTS[1], dtype=types.INT32, ndim=0)
        shared = fn.external_source(name=UNION_INPUTS[2], dtype=types.BOOL, ndim=0)
        if shared:  # a DALI conditional: each sample takes one branch
            power1, power2 = union_powers(union, waves[0], waves[1], shift, spec.mel, geo.audio_samples)
        else:
            power1, power2 = audio_power(waves[0], spec.mel), audio_power(waves[1], spec.mel)
    else:
        power1, power2 = audio_power(waves[0], spec.mel), audio_power(waves[1], spec.mel)
    views_a = [augment_audio_power(power, spec.audio_aug, spec.mel, geo.audio_samples, draws) for power in (power1, power2)]
    return (*views_v, *views_a)


# work-graph inputs of the shared STFT of overlapping audio views (the loader fills them per batch,
# ``union_inputs``): view 1's samples + view 2's last ``shift`` hops, the shift in hops, and
# whether the sample's views share samples that way (else its two windows are transformed apart)
UNION_INPUTS = ("wave_union", "union_shift", "union_shared")


def uses_audio_union(spec: TrainGraphSpec) -> bool:
    """Whether the work graph shares one STFT between overlapping audio views: front ends made of
    plain windows (``union_supported``), no speed views (view 2's samples are resampled)."""
    return spec.speed is None and union_supported(spec.mel)


def union_inputs(wave1: np.ndarray, wave2: np.ndarray, offsets: np.ndarray, hop: int) -> tuple[list, np.ndarray, np.ndarray]:
    """Per sample of a batch (int16 windows ``[B, N]`` and view 2's planned start minus view 1's,
    in samples): (union window, shift in hops, shared). A sample shares when the offset is a whole
    number of hops in [0, N) and the windows agree on their common samples (checked, so clamped
    or padded windows simply take the separate path)."""
    count = wave1.shape[1]
    unions, shifts, shared = [], np.zeros(len(wave1), np.int32), np.zeros(len(wave1), np.bool_)
    for b, offset in enumerate(offsets):
        ok = 0 <= offset < count and offset % hop == 0 and np.array_equal(wave1[b, offset:], wave2[b, : count - offset])
        unions.append(np.concatenate([wave1[b], wave2[b, count - offset :]]) if ok else wave1[b])
        shifts[b], shared[b] = (offset // hop, True) if ok else (0, False)
    return unions, shifts, shared


def _sped_to_view(pcm_window: DataNode, num_samples: int, device: str) -> DataNode:
    """A view-2 window of ``s * num_samples`` int16 samples -> ``num_samples`` float32 samples.

    ``fn.resize`` on the signal seen as a 1 x L image, Lanczos-3 with ``antialias``: for a
    downscale by s the kernel widens by s, so it low-passes at the new Nyquist before it
    decimates, as torchaudio's ``Resample`` (the paper's A.2) does. ``fn.audio_resample`` is not
    used: with ``out_length``/``scale``/``in_rate`` it decimates without that low-pass (a 3 kHz tone
    sped up 4x came out folded to 1 kHz at full level; tests/test_loader_speed.py). Output sample n
    sits at input position (n + 0.5) * s - 0.5 (pixel centres): a (s - 1) / 2-sample lead on
    ``x[::s]``, under 0.1 ms. It runs on the CPU (cheap next to decoding) before the audio moves to
    the GPU; a speed-1 window comes out unchanged up to float rounding (2e-8)."""
    wave = fn.cast(pcm_window, dtype=types.FLOAT) * (1.0 / 32768.0)
    image = fn.reshape(wave, shape=[1, -1, 1], layout="HWC")
    image = fn.resize(image, size=[1, num_samples], interp_type=types.INTERP_LANCZOS3, antialias=True,
                      dtype=types.FLOAT)
    wave = fn.reshape(image, shape=[num_samples], layout="")
    return wave.gpu() if device == "gpu" else wave


def _speed_draws(speed: SpeedSpec) -> tuple[DataNode, DataNode]:
    """(s_v, s_a) per sample, float32 integer values, uniform over each set."""
    s_v = fn.random.uniform(values=[float(v) for v in speed.video], dtype=types.FLOAT)
    s_a = s_v if speed.tie else fn.random.uniform(values=[float(a) for a in speed.audio], dtype=types.FLOAT)
    return s_v, s_a


def plan_graph(spec: TrainGraphSpec, reader: ReaderSpec, draw_specs: list[DrawSpec], *,
               packed: bool = True) -> tuple[DataNode, ...]:
    """Training stage 1 (checkpointable: reader + every random draw): read a sample, draw t1/t2,
    turn them into frame indices and PCM windows, draw the augmentation parameters.
    Outputs: ``PLAN_OUTPUTS`` (PLAN_DATA, PLAN_META, the packed draws). ``packed=False``: one random
    operator per draw, the graph of loader states written before the draws were packed."""
    video, audio, index = _reader(reader, [shard_format.VIDEO_EXT, reader.audio_ext, shard_format.INDEX_EXT])
    span = clip_span(parse_index(index))
    geo = spec.geometry
    speed = spec.speed
    # With speeds the start interval (and the fallback codes) are those of the longest window, so
    # t1/t2 do not depend on the speeds drawn.
    start_geo = geo if speed is None else replace(
        geo, stride=geo.stride * max(speed.video), audio_seconds=geo.audio_seconds * max(speed.audio))
    starts = sample_view_starts(span, start_geo, spec.relaxation, extreme_gap=spec.extreme_gap, alignment=spec.view_alignment)
    s_v, s_a = _speed_draws(speed) if speed is not None else (None, None)
    frame_ids = fn.cat(
        _frame_list(span, start_frame(span, starts.video1), geo),
        _frame_list(span, start_frame(span, starts.video2), geo, s_v),
    )
    pcm = _pcm(audio, reader.audio_format)
    length2 = geo.audio_samples if s_a is None else fn.cast(s_a * float(geo.audio_samples), dtype=types.INT64)
    waves = [_audio_window(pcm, start_sample(span, starts.audio1), geo.audio_samples),
             _audio_window(pcm, start_sample(span, starts.audio2), length2)]
    times = fn.stack(starts.video1, starts.audio1, starts.video2, starts.audio2)
    draws = packed_draws(draw_specs) if packed else [make_random(s) for s in draw_specs]
    # (v1, a1, v2, a2) speeds; without the option all ones, built after every random operator so
    # that the graph draws exactly what it drew before the option existed
    one = fn.cast(starts.fallback * 0 + 1, dtype=types.FLOAT)
    speeds = fn.stack(one, one, s_v if s_v is not None else one, s_a if s_a is not None else one)
    if not packed:  # exactly the version-1 graph (its checkpoints name every operator, outputs included)
        return (video, frame_ids, *waves, _key_bytes(index), times, starts.fallback, speeds, *draws)
    return (video, frame_ids, *waves, _key_bytes(index), times, starts.fallback, speeds, draws)


def _eval_starts(span: ClipSpan, spec: EvalGraphSpec) -> DataNode:
    """K clip start times (float64 vector): evenly spaced over the valid start interval
    (both ends included; the centre when K = 1) or uniform random."""
    geo = spec.geometry
    lows, highs = [], []
    if spec.video:
        lows.append(span.video_offset)
        highs.append(span.video_end - geo.video_seconds)
    if spec.audio:
        lows.append(span.audio_offset)
        highs.append(span.audio_end - geo.audio_seconds)
    lo = lows[0] if len(lows) == 1 else dmath.max(*lows)
    hi = highs[0] if len(highs) == 1 else dmath.min(*highs)
    width = dmath.max(hi - lo, 0.0)
    if spec.sampling == "random":
        fractions = fn.random.uniform(range=[0.0, 1.0], shape=[spec.clips], dtype=types.FLOAT64)
    elif spec.sampling == "uniform":
        grid = np.full(1, 0.5) if spec.clips == 1 else np.linspace(0.0, 1.0, spec.clips)
        fractions = types.Constant(grid.astype(np.float64))
    else:
        raise ValueError(f"sampling must be 'uniform' or 'random', not {spec.sampling!r}")
    return lo + fractions * width


def eval_graph(spec: EvalGraphSpec, reader: ReaderSpec, device: str, video_decoder: str | None = None) -> tuple[DataNode, ...]:
    """Outputs (each optional by modality): video [K,3,T,crop,crop], audio [K,1,80,F]; then key bytes."""
    if not (spec.video or spec.audio):
        raise ValueError("eval graph needs at least one modality")
    exts = ([shard_format.VIDEO_EXT] if spec.video else []) + ([reader.audio_ext] if spec.audio else [])
    components = _reader(reader, exts + [shard_format.INDEX_EXT])
    index = components[-1]
    span = clip_span(parse_index(index))
    starts = _eval_starts(span, spec)
    geo = spec.geometry
    draws = LiveDraws()
    outputs = []
    if spec.video:
        video = components[0]
        frame_ids = fn.cat(*[_frame_list(span, start_frame(span, starts[k]), geo) for k in range(spec.clips)])
        decoded = _decode(video, frame_ids, device, video_decoder)
        clips = [augment_video(decoded[k * geo.frames : (k + 1) * geo.frames], spec.video_aug, spec.crop, draws) for k in range(spec.clips)]
        outputs.append(fn.stack(*clips))
    if spec.audio:
        pcm = _pcm(components[1 if spec.video else 0], reader.audio_format)
        clips = [
            augment_audio(_to_float(_audio_window(pcm, start_sample(span, starts[k]), geo.audio_samples), device), spec.audio_aug, spec.mel, geo.audio_samples, draws)
            for k in range(spec.clips)
        ]
        outputs.append(fn.stack(*clips))
    outputs.append(_key_bytes(index))
    return tuple(outputs)


def probe_gpu_video_decoder(reader: ReaderSpec, device_id: int) -> str | None:
    """Decode the first frame of the reader's first sample with NVDEC (``mixed``): None when that
    works, else DALI's error. Whether NVDEC takes JPEG (the shards' all-intra MJPEG) depends on the
    GPU (DALI asks ``cuvidGetDecoderCaps``), so the evaluation loader asks once instead of assuming."""

    def graph():
        (video,) = _reader(reader, [shard_format.VIDEO_EXT])
        return (fn.decoders.video(video, device="mixed", frames=[0]),)

    try:
        pipe = build_pipeline(graph, device="gpu", batch_size=1, num_threads=1, device_id=device_id, seed=0, prefetch=1)
        pipe.run()
    except RuntimeError as exc:
        return " ".join(str(exc).split())[:500] or type(exc).__name__
    return None


def build_pipeline(
    graph: Callable[[], tuple[DataNode, ...]],
    *,
    device: str,
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    seed: int,
    checkpointing: bool = False,
    checkpoint: str | None = None,
    prefetch: int = 2,
) -> Pipeline:
    """Instantiate and build a pipeline around the graph-building function ``graph()``.

    A CPU pipeline without a queue (``prefetch=1``: the training work pipeline, fed and run in
    turn by the loader) uses DALI's simple executor (not pipelined, not asynchronous): nothing
    could overlap there, and the executor's thread hand-offs cost ~15 % of the loader's CPU
    (measured on the default ``bench loader`` graph). Everything else keeps the default."""
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', not {device!r}")
    overlapped = not (device == "cpu" and prefetch == 1 and not checkpointing)

    @pipeline_def(enable_checkpointing=checkpointing, enable_conditionals=True, exec_pipelined=overlapped,
                  exec_async=overlapped)
    def _pipe():
        return graph()

    pipe = _pipe(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if device == "gpu" else None,
        seed=seed,
        prefetch_queue_depth=prefetch,
        checkpoint=checkpoint,
    )
    pipe.build()
    return pipe
