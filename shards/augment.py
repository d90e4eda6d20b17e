"""DALI visual and audio augmentations (CrissCross supplement, Tables S1-S4), each switchable.

Visual (Table S1), applied to a decoded view ``[F, H, W, 3]`` uint8 with ONE draw of every random
parameter per view, so all frames of a view get the same crop/flip/colour/blur/cutout (DALI
sequence operators apply per-sample arguments to every frame), and two views get independent
draws (every call creates its own random nodes):

    multi-scale crop -> resize, flip, colour jitter (+ grayscale), Gaussian blur, cutout, normalize

Audio (Table S2) on a float32 waveform window:

    volume jitter -> log-mel -> normalize -> [time warp] -> freq/time masks -> random resized crop

Per-stage order and the exact distributions are documented in ``docs/shards.md``.

Every random number comes from a :class:`Draws` object. ``LiveDraws`` creates DALI random
operators in place; ``RecordedDraws`` turns each draw into an ``external_source`` input and records
its distribution, so that the draws can be made in a separate, checkpointable DALI pipeline (the
video decoder does not support DALI checkpointing; see ``pipelines.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali.pipeline import DataNode

from crisscross.shards import params
from crisscross.shards.params import Sym

# R(2+1)D / Kinetics-400 statistics used by torchvision's video models (RGB in [0, 1]).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
# Log-mel (natural log, eps 1e-6, the front end below) mean and standard deviation over all
# frames and bands of the 400 ESC-10 recordings at 16 kHz (docs/shards.md gives the recipe);
# used unless the config gives dataset-specific ones (``logmel_mean`` / ``logmel_std``).
LOGMEL_MEAN = -6.666
LOGMEL_STD = 4.948
LOG_EPS = 1e-6
# logspec (10 log10 power, n_fft 512, hop 160, top_db 100 per 2 s window) mean and standard deviation
# over all bins and frames of the 400 ESC-10 recordings at 16 kHz cut into 2 s windows (41.1 M values;
# docs/shards.md "Audio front ends"): a global normalisation, not AVID's per-bin z-norm.
LOGSPEC_MEAN = -30.76
LOGSPEC_STD = 28.58


def _from_dict(cls, values: dict | None):
    """Build a dataclass from a dict, rejecting unknown keys (typos must not pass silently)."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known: {sorted(known)}")
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    return cls(**values)


@dataclass(frozen=True)
class VideoAugment:
    """Table S1. ``*_p`` are probabilities; set a switch to False to ablate (paper Table 5)."""

    crop: bool = True  # multi-scale crop (torchvision RandomResizedCrop semantics)
    crop_area: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    flip_p: float = 0.5
    color_jitter: bool = True
    color_jitter_p: float = 1.0
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.2  # fraction of the hue circle, as torchvision (0.2 -> +-72 degrees)
    grayscale: bool = True
    grayscale_p: float = 0.2
    blur: bool = True
    blur_p: float = 0.5
    blur_kernel: int = 11
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    cutout: bool = True
    cutout_max_size: int = 20  # side drawn uniformly from [1, max]; filled with first-frame mean
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD

    @classmethod
    def from_dict(cls, values: dict | None) -> VideoAugment:
        return _from_dict(cls, values)

    @classmethod
    def disabled(cls, **overrides) -> VideoAugment:
        off = dict(crop=False, flip=False, color_jitter=False, grayscale=False, blur=False, cutout=False)
        off.update(overrides)
        return cls(**off)


@dataclass(frozen=True)
class AudioAugment:
    """Table S2; time warp exists but is off in pretraining (Table S4)."""

    volume: bool = True
    volume_range: float = 0.2  # gain drawn from [1 - r, 1 + r]
    freq_mask: bool = True
    freq_mask_num: int = 2
    freq_mask_max: int = 10
    time_mask: bool = True
    time_mask_num: int = 2
    time_mask_max: int = 20
    random_crop: bool = True  # BYOL-A RandomResizeCrop on the log-mel
    crop_virtual_scale: tuple[float, float] = (1.0, 1.5)  # canvas (freq, time) relative to input
    crop_freq_scale: tuple[float, float] = (0.6, 1.5)
    crop_time_scale: tuple[float, float] = (0.6, 1.5)
    time_warp: bool = False
    time_warp_window: int = 20

    @classmethod
    def from_dict(cls, values: dict | None) -> AudioAugment:
        return _from_dict(cls, values)

    @classmethod
    def disabled(cls, **overrides) -> AudioAugment:
        off = dict(volume=False, freq_mask=False, time_mask=False, random_crop=False, time_warp=False)
        off.update(overrides)
        return cls(**off)


# ``audio_frontend`` (docs/shards.md "Audio front ends"): logmel (CrissCross), logspec (AVID's
# log power spectrogram), logfbank (GDT/STiCA/SvaCLR's log filterbank).
AUDIO_FRONTENDS = ("logmel", "logspec", "logfbank")
PREEMPHASIS = 0.97  # logfbank (python_speech_features' default, GDT's front end)
FBANK_WINDOW_SECONDS = 0.02  # logfbank: 20 ms rectangular window
DB_FLOOR = 1e-10  # logspec: 10 log10(max(S, 1e-10)), librosa.power_to_db's amin
TOP_DB = 100.0  # logspec: values below the sample's maximum - 100 dB are raised to it


@dataclass(frozen=True)
class LogMel:
    """Audio front end (named after its default, the log-mel). ``frontend``:

    - ``logmel``: librosa.feature.melspectrogram(power=2, slaney) then log(x + eps), Hann n_fft window;
    - ``logspec``: |STFT|^2 (Hann n_fft window, n_fft // 2 + 1 bins), 10 log10(max(S, 1e-10)),
      floored at the sample's max - 100 dB (librosa.power_to_db(ref=1, top_db=100));
    - ``logfbank``: pre-emphasis 0.97, 20 ms rectangular window zero-padded to n_fft, |STFT|^2,
      ``n_mels`` HTK mel filters (unnormalised triangles), log(x + eps).

    ``normalize`` applies the global ``(x - mean) / std``; logfbank is never normalised (GDT)."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop: int = 160
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = None  # None -> sample_rate / 2
    mean: float = LOGMEL_MEAN
    std: float = LOGMEL_STD
    normalize: bool = True
    frontend: str = "logmel"

    def __post_init__(self) -> None:
        if self.frontend not in AUDIO_FRONTENDS:
            raise ValueError(f"audio_frontend must be one of {AUDIO_FRONTENDS}, not {self.frontend!r}")
        if self.frontend == "logfbank" and self.window_length > self.n_fft:
            raise ValueError(f"logfbank: the 20 ms window ({self.window_length} samples) is longer than "
                             f"n_fft={self.n_fft}")

    @property
    def bins(self) -> int:
        """Rows of the map: n_fft // 2 + 1 for logspec, else n_mels."""
        return self.n_fft // 2 + 1 if self.frontend == "logspec" else self.n_mels

    @property
    def window_length(self) -> int:
        if self.frontend == "logfbank":
            return int(round(FBANK_WINDOW_SECONDS * self.sample_rate))
        return self.n_fft

    @property
    def normalized(self) -> bool:
        return self.normalize and self.frontend != "logfbank"

    def frames(self, num_samples: int) -> int:
        """Frames kept for a window: floor(samples / hop) (2 s at 16 kHz, hop 160 -> 200)."""
        return num_samples // self.hop


@dataclass(frozen=True)
class AugmentConfig:
    video: VideoAugment = field(default_factory=VideoAugment)
    audio: AudioAugment = field(default_factory=AudioAugment)

    @classmethod
    def from_dict(cls, values: dict | None) -> AugmentConfig:
        values = dict(values or {})
        unknown = sorted(set(values) - {"video", "audio"})
        if unknown:
            raise ValueError(f"augment: unknown keys {unknown}; known: ['audio', 'video']")
        return cls(VideoAugment.from_dict(values.get("video")), AudioAugment.from_dict(values.get("audio")))


@dataclass(frozen=True)
class DrawSpec:
    """One random draw per sample: ``uniform`` in [lo, hi) or ``coin`` (1.0 with probability p).
    ``name`` says which parameter it is (e.g. ``video.hue``): the recipe tests find draws by it."""

    kind: str
    lo: float = 0.0
    hi: float = 1.0
    size: int = 0  # 0: a scalar, else a vector of this length
    name: str = ""


class Draws:
    """Source of per-sample random numbers for the augmentation graph, and the arithmetic that
    turns them into operator arguments. This base class does that arithmetic with DALI operators
    inside the graph (``LiveDraws``, the evaluation pipelines); ``RecordedDraws`` (training)
    records it as expressions that the loader evaluates with numpy for a whole batch
    (``params.py``). The augmentation code only uses these methods, Python arithmetic and
    indexing on the values, and ``node`` where a value becomes an operator's argument."""

    def uniform(self, lo: float, hi: float, size: int = 0, *, name: str = "") -> DataNode:
        return self.draw(DrawSpec("uniform", float(lo), float(hi), size, name))

    def coin(self, p: float, *, name: str = "") -> DataNode:
        return self.draw(DrawSpec("coin", float(p), float(p), name=name))

    def draw(self, spec: DrawSpec) -> DataNode:
        raise NotImplementedError

    # -- arithmetic on per-sample values (scalars or small vectors)
    def floor(self, x): return dmath.floor(x)
    def sqrt(self, x): return dmath.sqrt(x)
    def exp(self, x): return dmath.exp(x)
    def minimum(self, x, y): return dmath.min(x, y)
    def maximum(self, x, y): return dmath.max(x, y)
    def clamp(self, x, lo: float, hi: float): return dmath.clamp(x, lo, hi)
    def sum(self, x): return fn.reductions.sum(x)
    def min(self, x): return fn.reductions.min(x)
    def as_float(self, x): return fn.cast(x, dtype=types.FLOAT)
    def const(self, values) -> Any: return types.Constant(np.asarray(values, dtype=np.float32))

    def stack(self, *values):
        """Scalars (values or Python numbers) -> a vector."""
        ref = next((v for v in values if isinstance(v, DataNode)), None)
        if ref is None:
            return self.const(values)
        return fn.stack(*[v if isinstance(v, DataNode) else ref * 0.0 + float(v) for v in values])

    def node(self, value, dtype=types.FLOAT):
        """``value`` as an operator's argument (a Python number stays a number)."""
        if not isinstance(value, DataNode) or dtype == types.FLOAT:
            return value
        return fn.cast(value, dtype=dtype)

    def frame_size(self, frames: DataNode, *, one_frame: bool):
        """(height, width) of a decoded ``[F, H, W, C]`` sequence or one ``[H, W, C]`` frame."""
        shape = fn.cast(frames.shape(), dtype=types.FLOAT)
        return (shape[0], shape[1]) if one_frame else (shape[1], shape[2])


DALI_MATH = Draws()  # the base class's arithmetic, for code that has no Draws at hand


def make_random(spec: DrawSpec) -> DataNode:
    """The DALI random operator that realizes ``spec``."""
    shape = [spec.size] if spec.size else None
    if spec.kind == "coin":
        return fn.cast(fn.random.coin_flip(probability=spec.lo, dtype=types.UINT8, shape=shape), dtype=types.FLOAT)
    return fn.random.uniform(range=[spec.lo, spec.hi], dtype=types.FLOAT, shape=shape)


class LiveDraws(Draws):
    """Random operators inside the graph being built (the evaluation pipelines)."""

    def draw(self, spec: DrawSpec) -> DataNode:
        return make_random(spec)


def draw_layout(specs: list[DrawSpec]) -> list[tuple[int, int]]:
    """(offset, length) of each draw in the packed draw vector, in ``specs`` order."""
    layout, offset = [], 0
    for spec in specs:
        length = max(spec.size, 1)
        layout.append((offset, length))
        offset += length
    return layout


def unpack_draws(packed: np.ndarray, specs: list[DrawSpec]) -> list[np.ndarray]:
    """A batch of packed draw vectors ``[B, K]`` -> one ``[B]`` or ``[B, size]`` array per spec."""
    return [packed[:, o] if not spec.size else packed[:, o : o + n] for spec, (o, n) in zip(specs, draw_layout(specs))]


_NUMPY_DTYPES = {types.FLOAT: np.float32, types.BOOL: np.bool_, types.INT32: np.int32}


class RecordedDraws(Draws):
    """Training: the draws come from the plan pipeline (``specs``, in order; one packed vector per
    sample, ``draw_layout``), and the arithmetic on them is recorded (``params.Sym``) instead of
    becoming ~400 scalar DALI operators. Each value handed to an operator (``node``) becomes an
    ``external_source`` (``param{i}``) that the loader fills per batch with ``evaluate``: numpy
    over the batch. Frame sizes come from the JPEG headers of the frames registered with
    ``register_frames``."""

    def __init__(self) -> None:
        self.specs: list[DrawSpec] = []
        self.params: list[tuple[str, Sym, Any]] = []  # (input name, expression, DALI dtype)
        self.frame_slots: dict[int, int] = {}  # id(decoded frame node) -> JPEG input slot
        self.size_slots: list[int] = []  # the slots whose sizes the expressions read

    def draw(self, spec: DrawSpec) -> Sym:
        self.specs.append(spec)
        return params.leaf(("draw", len(self.specs) - 1), spec.size)

    def floor(self, x): return params.apply("floor", x)
    def sqrt(self, x): return params.apply("sqrt", x)
    def exp(self, x): return params.apply("exp", x)
    def minimum(self, x, y): return params.apply("minimum", x, y)
    def maximum(self, x, y): return params.apply("maximum", x, y)
    def clamp(self, x, lo: float, hi: float): return params.apply("clamp", x, lo, hi)
    def sum(self, x): return params.apply("sum", x, size=0)
    def min(self, x): return params.apply("min", x, size=0)
    def as_float(self, x): return params.apply("as_float", x)
    def const(self, values) -> Any: return np.asarray(values, dtype=np.float32)
    def stack(self, *values): return params.apply("stack", *values, size=len(values))

    def node(self, value, dtype=types.FLOAT):
        if not isinstance(value, Sym):
            return value
        name = f"param{len(self.params)}"
        self.params.append((name, value, dtype))
        return fn.external_source(name=name, dtype=dtype, ndim=1 if value.size else 0)

    def register_frames(self, frames: list[DataNode]) -> None:
        """The decoded frames of JPEG inputs ``jpeg{j}``, in slot order (their sizes are read from
        the JPEG headers when a crop box needs them)."""
        self.frame_slots = {id(frame): slot for slot, frame in enumerate(frames)}

    def frame_size(self, frames: DataNode, *, one_frame: bool):
        slot = self.frame_slots.get(id(frames))
        if slot is None or not one_frame:
            raise ValueError("RecordedDraws: a frame size is only known for a registered decoded frame")
        self.size_slots.append(slot)
        size = params.leaf(("size", slot), 2)
        return size[0], size[1]

    def evaluate(self, packed: np.ndarray, sizes: dict[int, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        """Every recorded parameter for a batch: ``packed`` draws ``[B, K]`` (``draw_layout``),
        ``sizes`` slot -> ``[B, 2]`` (height, width) of that slot's frames."""
        batch = len(packed)
        leaves: dict[Any, np.ndarray] = {("size", slot): sizes[slot] for slot in self.size_slots}
        for i, column in enumerate(unpack_draws(np.asarray(packed, dtype=np.float32), self.specs)):
            leaves[("draw", i)] = column
        values = params.evaluate([sym for _, sym, _ in self.params], leaves, batch)
        return [(name, value.astype(_NUMPY_DTYPES[dtype])) for (name, _, dtype), value in zip(self.params, values)]


def packed_draws(specs: list[DrawSpec]) -> DataNode:
    """Every draw of ``specs`` from one ``uniform[0, 1)`` vector per sample: a uniform draw is
    ``lo + (hi - lo) u``, a coin is ``u < p`` (1.0 / 0.0): the distributions of ``make_random``,
    with one random operator instead of one per draw."""
    lo, scale, coin, p = [], [], [], []
    for spec, (_, length) in zip(specs, draw_layout(specs)):
        is_coin = spec.kind == "coin"
        lo += [0.0 if is_coin else spec.lo] * length
        scale += [0.0 if is_coin else spec.hi - spec.lo] * length
        coin += [1.0 if is_coin else 0.0] * length
        p += [spec.lo if is_coin else 0.0] * length
    if not specs:
        return types.Constant(np.zeros(0, dtype=np.float32))
    u = fn.random.uniform(range=[0.0, 1.0], shape=[len(lo)], dtype=types.FLOAT)
    const = [types.Constant(np.asarray(v, dtype=np.float32)) for v in (lo, scale, coin, p)]
    lo_c, scale_c, coin_c, p_c = const
    return coin_c * fn.cast(u < p_c, dtype=types.FLOAT) + (1.0 - coin_c) * (lo_c + scale_c * u)


# ----------------------------------------------------------------------------- visual

CROP_ATTEMPTS = 10

Box = tuple[DataNode, DataNode, DataNode, DataNode]  # y0, x0, height, width in pixels (float)


def _multiscale_box(frames: DataNode, aug: VideoAugment, draws: Draws, *, one_frame: bool = False) -> Box:
    """torchvision RandomResizedCrop box, in DALI arithmetic: 10 attempts of (area, log-ratio);
    the first whose box fits the frame wins; if none fits, the whole frame. Returns
    (y0, x0, height, width) in pixels."""
    height, width = draws.frame_size(frames, one_frame=one_frame)  # [F, H, W, C] or one frame [H, W, C]
    area = draws.uniform(*aug.crop_area, size=CROP_ATTEMPTS, name="video.crop_area") * (height * width)
    log_ratio = draws.uniform(math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1]), size=CROP_ATTEMPTS,
                              name="video.crop_log_ratio")
    ratio = draws.exp(log_ratio)
    box_w = draws.floor(draws.sqrt(area * ratio) + 0.5)
    box_h = draws.floor(draws.sqrt(area / ratio) + 0.5)
    fits = draws.as_float((box_w <= width) & (box_h <= height) & (box_w >= 1.0) & (box_h >= 1.0))
    rank = draws.const(np.arange(CROP_ATTEMPTS)) + (1.0 - fits) * 1000.0
    first = draws.min(rank)
    chosen = draws.as_float(rank == first) * draws.as_float(first < 1000.0)
    any_fit = draws.sum(chosen)  # 1.0 or 0.0
    w = draws.sum(box_w * chosen) + (1.0 - any_fit) * width
    h = draws.sum(box_h * chosen) + (1.0 - any_fit) * height
    y0 = draws.floor(draws.uniform(0.0, 1.0, name="video.crop_y") * (height - h + 1.0 - 1e-3))
    x0 = draws.floor(draws.uniform(0.0, 1.0, name="video.crop_x") * (width - w + 1.0 - 1e-3))
    return y0, x0, h, w


def _roi(box: Box, flip: DataNode | None, draws: Draws) -> tuple[DataNode, DataNode]:
    """The box as ``fn.resize``'s (roi_start, roi_end) [y, x]. ``flip`` (1.0 / 0.0) swaps the x
    ends, which ``fn.resize`` reads as a horizontal flip: it samples the mirrored positions, the
    same values as flipping after the resize (up to rounding) at no cost (the mirror in
    ``crop_mirror_normalize`` cost 0.2 ms per 8-frame 112 px view)."""
    y0, x0, h, w = box
    if flip is None:
        return draws.node(draws.stack(y0, x0)), draws.node(draws.stack(y0 + h, x0 + w))
    left = x0 + flip * w
    return draws.node(draws.stack(y0, left)), draws.node(draws.stack(y0 + h, left + (1.0 - 2.0 * flip) * w))


def resize_crop_video(frames: DataNode | list[DataNode], crop: int, box: Box | None = None,
                      flip: DataNode | None = None, draws: Draws = DALI_MATH) -> DataNode:
    """Resize the crop ``box`` (flipped where ``flip`` is 1) to ``crop`` x ``crop``, or without a
    box a short-side resize + centre crop.

    ``frames``: a ``[F, H, W, 3]`` sequence, or the view's decoded ``[H, W, 3]`` frames as a list
    (training): each frame is resized with the view's box, then the small frames are stacked;
    the same output, 15 % cheaper on the CPU than stacking the full frames first (measured: 1.6 vs
    1.9 ms per 8-frame view; the box comes from the first frame, all frames of a clip share a size)."""
    listed = isinstance(frames, (list, tuple))
    if box is not None:
        start, end = _roi(box, flip, draws)
        if listed:
            return fn.stack(*[fn.resize(f, roi_start=start, roi_end=end, size=[crop, crop], antialias=False)
                              for f in frames], axis_name="F")
        return fn.resize(frames, roi_start=start, roi_end=end, size=[crop, crop], antialias=False)
    if flip is not None:
        raise ValueError("resize_crop_video: a flip needs a crop box")
    if listed:
        resized = [fn.crop(fn.resize(f, resize_shorter=crop, antialias=False), crop=[crop, crop]) for f in frames]
        return fn.stack(*resized, axis_name="F")
    return fn.crop(fn.resize(frames, resize_shorter=crop, antialias=False), crop=[crop, crop])


@dataclass(frozen=True)
class TwistParams:
    brightness: DataNode | float
    contrast: DataNode | float
    saturation: DataNode | float
    hue: DataNode | float  # degrees (DALI's hue argument)


def _twist_params(aug: VideoAugment, draws: Draws) -> TwistParams:
    """Colour jitter and grayscale as one colour matrix per view (grayscale = saturation 0, applied
    after the jitter as torchvision's order; hue rotation in YIQ keeps luma, so this equals
    jitter-then-grayscale)."""
    jitter = draws.coin(aug.color_jitter_p, name="video.color_jitter") if aug.color_jitter else None

    def factor(amount: float, name: str) -> DataNode | float:
        if jitter is None or amount == 0:
            return 1.0
        return 1.0 + jitter * (draws.uniform(max(0.0, 1 - amount), 1 + amount, name=f"video.{name}") - 1.0)

    brightness, contrast = factor(aug.brightness, "brightness"), factor(aug.contrast, "contrast")
    saturation = factor(aug.saturation, "saturation")
    # torchvision's hue is a fraction of the circle
    hue = jitter * draws.uniform(-360.0 * aug.hue, 360.0 * aug.hue, name="video.hue") if (jitter is not None and aug.hue) else 0.0
    if aug.grayscale:
        saturation = saturation * (1.0 - draws.coin(aug.grayscale_p, name="video.grayscale"))
    return TwistParams(brightness, contrast, saturation, hue)


def _apply_twist(frames: DataNode, twist: TwistParams, draws: Draws = DALI_MATH) -> DataNode:
    """Float output, clamped to the uint8 range: the same values as the uint8 twist without its
    rounding. The clamp is min(max()): DALI's CPU ``math.clamp`` costs 3x as much for the same
    result (measured per 8-frame 112 px view: twist 0.90, min(max()) 0.26, clamp 0.81, a uint8
    output 2.8 ms)."""
    twisted = fn.color_twist(frames, brightness=draws.node(twist.brightness), contrast=draws.node(twist.contrast),
                             saturation=draws.node(twist.saturation), hue=draws.node(twist.hue), dtype=types.FLOAT)
    return dmath.min(dmath.max(twisted, 0.0), 255.0)


def gaussian_taps(sigma: DataNode, window: int, draws: Draws = DALI_MATH) -> DataNode:
    """The normalized Gaussian window ``exp(-x^2 / (2 sigma^2))``, x in [-window//2, window//2],
    per sample (float32 vector): the kernel ``fn.gaussian_blur`` builds for ``window_size``/``sigma``."""
    half = window // 2
    squares = draws.const(-0.5 * np.arange(-half, half + 1, dtype=np.float32) ** 2)
    taps = draws.exp(squares / (sigma * sigma))
    return taps / draws.sum(taps)


def _blur_params(aug: VideoAugment, draws: Draws) -> tuple[DataNode, DataNode]:
    """(applied, sigma): the blur's coin (p) and sigma ~ U(blur_sigma)."""
    applied = draws.node(draws.coin(aug.blur_p, name="video.blur"), dtype=types.BOOL)
    return applied, draws.uniform(*aug.blur_sigma, name="video.blur_sigma")


def _apply_blur(frames: DataNode, aug: VideoAugment, applied: DataNode, sigma: DataNode, *, is_float: bool,
                draws: Draws = DALI_MATH) -> DataNode:
    """Gaussian blur (11-tap window) where ``applied``. A DALI conditional (the graph is built with
    ``enable_conditionals``) runs the blur only on the chosen samples: the blur is the most
    expensive visual operator, and half the views skip it. The blur is two 1-D passes
    (``fn.filter`` along W, then H, float, border reflect-101 as ``fn.gaussian_blur``): the same
    kernel and borders, 2.6x cheaper on the CPU than ``fn.gaussian_blur`` (measured: 1.6 vs 4.2 ms
    per 8-frame 112 px view). The output is float (no rounding back to uint8). The kernel and the
    borders are symmetric, so the blur commutes with the horizontal flip."""
    if not is_float:  # both branches must give float frames
        frames = fn.cast(frames, dtype=types.FLOAT)
    taps = draws.node(gaussian_taps(sigma, aug.blur_kernel, draws))  # made outside the conditional
    if applied:
        along_w = fn.filter(frames, fn.reshape(taps, shape=[1, aug.blur_kernel]), dtype=types.FLOAT, border="reflect_101")
        frames = fn.filter(along_w, fn.reshape(taps, shape=[aug.blur_kernel, 1]), border="reflect_101")
    return frames


def _cutout_params(aug: VideoAugment, crop: int, draws: Draws) -> tuple[DataNode, DataNode]:
    """(side, anchor [y, x]): one square hole per view, side uniform in {1..max}, centre uniform
    over the image (the square is clipped), as the reference implementation."""
    side = draws.floor(draws.uniform(1.0, aug.cutout_max_size + 1.0 - 1e-3, name="video.cutout_side"))
    centre = draws.uniform(0.0, float(crop), size=2, name="video.cutout_centre")
    return side, draws.floor(centre - side / 2.0)


def _apply_cutout(frames: DataNode, side: DataNode, anchor: DataNode, crop: int, flip: DataNode | None,
                  draws: Draws = DALI_MATH) -> DataNode:
    """The hole, filled with the per-channel mean of the view's first frame (the paper; the official
    code multiplies instead, which we do not copy), in every frame. ``flip``: the frames were
    flipped before the hole is cut (in the resize), so the hole moves to its mirror image: the
    output is that of cutting first and flipping after."""
    if flip is not None:
        x0 = anchor[1]  # the mirror of [x0, x0 + side) is [crop - side - x0, crop - x0)
        anchor = draws.stack(anchor[0], x0 + flip * (float(crop) - side - 2.0 * x0))
    fill = fn.reductions.mean(fn.cast(frames[0], dtype=types.FLOAT), axes=[0, 1])
    if fill.device == "gpu":  # operator arguments live on the CPU: a small GPU->CPU copy per view
        fill = fill.cpu()
    return fn.erase(frames, anchor=draws.node(anchor), shape=draws.node(draws.stack(side, side)), axis_names="HW",
                    fill_value=fill)


def augment_video(frames: DataNode | list[DataNode], aug: VideoAugment, crop: int, draws: Draws) -> DataNode:
    """``[F, H, W, 3]`` uint8 (or a list of F ``[H, W, 3]`` frames) -> ``[3, F, crop, crop]``
    float32, normalized (one param draw per view).

    Every parameter is drawn first, in a fixed order (crop, colour, blur, cutout, flip: the order
    of the checkpointed plan's draws), then applied: crop + resize (+ flip, through the resize's
    region), colour twist, blur, cutout, normalize. Without a crop box the flip is
    ``crop_mirror_normalize``'s mirror, after the cutout."""
    listed = isinstance(frames, (list, tuple))
    box = _multiscale_box(frames[0] if listed else frames, aug, draws, one_frame=listed) if aug.crop else None
    twisted = aug.color_jitter or aug.grayscale
    twist = _twist_params(aug, draws) if twisted else None
    blur = _blur_params(aug, draws) if aug.blur else None
    cutout = _cutout_params(aug, crop, draws) if aug.cutout else None
    flip = draws.coin(aug.flip_p, name="video.flip") if aug.flip else None
    flip_in_resize = flip if box is not None else None

    frames = resize_crop_video(frames, crop, box, flip_in_resize, draws)
    if twist is not None:
        frames = _apply_twist(frames, twist, draws)  # float from here on
    if blur is not None:
        frames = _apply_blur(frames, aug, *blur, is_float=twisted, draws=draws)
    if cutout is not None:
        frames = _apply_cutout(frames, *cutout, crop, flip_in_resize, draws)
    mirror = draws.node(flip, dtype=types.INT32) if (flip is not None and box is None) else 0
    return fn.crop_mirror_normalize(
        frames,
        mirror=mirror,
        mean=[255.0 * m for m in aug.mean],
        std=[255.0 * s for s in aug.std],
        dtype=types.FLOAT,
        output_layout="CFHW",
    )


# ----------------------------------------------------------------------------- audio


def _periodic_hann(length: int) -> list[float]:
    """scipy.signal.get_window("hann", n) (periodic), librosa's STFT window; DALI's default
    window is the symmetric one, which moves the lowest mel bands by up to 0.09 in log."""
    return np.hanning(length + 1)[:-1].astype(np.float32).tolist()


# DALI's CPU spectrogram is 30 % cheaper written time-major ("tf": 0.61 vs 0.86 ms per 2 s window
# at n_fft 1024, hop 160); the mel bank reads either layout, and the small map is transposed after it.
SPECTROGRAM_LAYOUT = "tf"


def _freq_major(spec: DataNode) -> DataNode:
    """A time-major ``[frames, bins]`` map -> ``[bins, frames]``."""
    return fn.transpose(spec, perm=[1, 0], output_layout="ft")


def audio_power(wave: DataNode, mel: LogMel, *, centred: bool = True) -> DataNode:
    """The front end's linear power map, time-major ``[frames, bins]``: |STFT|^2 (logspec), its
    Slaney mel bank (logmel) or its HTK mel bank after pre-emphasis (logfbank). ``centred``:
    zero-padded centred frames (librosa's ``center=True``, every front end here); ``False`` gives
    the frames whose windows lie inside ``wave`` (the edge frames of ``union_powers``). The map is
    linear in the signal's power, so a volume gain g is a factor g^2 on it."""
    if mel.frontend == "logfbank":
        wave = fn.preemphasis_filter(wave, preemph_coeff=PREEMPHASIS, border="zero")
    window = [1.0] * mel.window_length if mel.frontend == "logfbank" else _periodic_hann(mel.n_fft)
    spec = fn.spectrogram(wave, nfft=mel.n_fft, window_length=mel.window_length, window_step=mel.hop,
                          center_windows=centred, reflect_padding=False, power=2, window_fn=window,
                          layout=SPECTROGRAM_LAYOUT)
    if mel.frontend == "logspec":
        return spec
    slaney = mel.frontend == "logmel"
    return fn.mel_filter_bank(spec, sample_rate=float(mel.sample_rate), nfilter=mel.n_mels, freq_low=mel.fmin,
                              freq_high=float(mel.fmax or mel.sample_rate / 2), mel_formula="slaney" if slaney else "htk",
                              normalize=slaney)


def power_to_features(power: DataNode, mel: LogMel, num_samples: int) -> DataNode:
    """``[frames, bins]`` power -> ``[bins, N // hop]`` features: log(x + eps) (logmel, logfbank) or
    10 log10(max(x, 1e-10)) floored at the sample's max - 100 dB (logspec). librosa (centred) gives
    1 + N // hop frames; the first N // hop are kept (200 for 2 s)."""
    kept = _freq_major(power)[:, : mel.frames(num_samples)]
    if mel.frontend != "logspec":
        return dmath.log(kept + LOG_EPS)
    db = fn.to_decibels(kept, multiplier=10.0, reference=1.0, cutoff_db=10.0 * math.log10(DB_FLOOR))
    # top_db over the kept frames: the sample's own maximum (per sample, like librosa's per call)
    return dmath.max(db, fn.reductions.max(db) - TOP_DB)


def log_mel(wave: DataNode, mel: LogMel, num_samples: int) -> DataNode:
    """float32 waveform ``[N]`` -> ``[n_mels, N // hop]`` log-mel: librosa.feature.melspectrogram
    (power 2, Slaney, zero-padded centred STFT, periodic Hann) then log(x + eps)."""
    logmel = replace(mel, frontend="logmel")
    return power_to_features(audio_power(wave, logmel), logmel, num_samples)


def audio_features(wave: DataNode, mel: LogMel, num_samples: int) -> DataNode:
    """The front end ``mel.frontend`` (not normalised): ``[mel.bins, N // hop]``.

    - logmel: see ``log_mel``;
    - logspec: librosa.power_to_db(|stft(n_fft, hann, centred, zero-padded)|^2, ref=1, amin=1e-10, top_db=100);
    - logfbank: pre-emphasis 0.97 (first sample kept), 20 ms rectangular window zero-padded to
      n_fft, power spectrum, HTK mel filters without area normalisation, natural log (+ eps)."""
    return power_to_features(audio_power(wave, mel), mel, num_samples)


# ----------------------------------------------------------------------------- overlapping views


def union_supported(mel: LogMel) -> bool:
    """Front ends whose centred frames are plain windows of the signal (logmel, logspec): two
    overlapping windows can share one STFT. logfbank's pre-emphasis reaches across a view's start."""
    return mel.frontend in ("logmel", "logspec")


def union_edges(mel: LogMel, num_samples: int) -> tuple[int, int, int]:
    """For a view of ``num_samples`` samples: (frames of view 1 whose windows end inside it, frames
    at view 2's start whose windows begin before it, frames kept per view). With n_fft 1024, hop
    160, 2 s: (197, 4, 200): only 3 + 4 frames of two 200-frame views see a view's zero padding."""
    pad, hop, kept = mel.n_fft // 2, mel.hop, mel.frames(num_samples)
    inside = min((num_samples - pad) // hop + 1, kept)
    return inside, min(-(-pad // hop), kept), kept


def _edge_power(wave: DataNode, mel: LogMel, first_frame: int, count: int) -> DataNode:
    """Frames ``first_frame .. first_frame + count - 1`` of ``wave``'s centred STFT, from the
    zero-padded samples they cover (uncentred frames of a ``fn.slice`` that pads with zeros)."""
    start = first_frame * mel.hop - mel.n_fft // 2
    length = (count - 1) * mel.hop + mel.n_fft
    piece = fn.slice(wave, types.Constant(np.array([start], np.int32)), types.Constant(np.array([length], np.int32)), axes=[0],
                     out_of_bounds_policy="pad", fill_values=0.0)
    return audio_power(piece, mel, centred=False)


def union_powers(union: DataNode, wave1: DataNode, wave2: DataNode, shift: DataNode, mel: LogMel,
                 num_samples: int) -> tuple[DataNode, DataNode]:
    """Both views' power maps ``[kept, bins]`` from ONE centred STFT of ``union`` = view 1's
    samples followed by view 2's last ``shift * hop`` samples (view 2 starts ``shift`` hops after
    view 1, 0 <= shift * hop < num_samples): view 1 is the union's first frames, view 2 the frames
    from ``shift`` on. The frames whose windows reach past a view's own ends are computed again from
    that view's zero-padded samples (``union_edges``): the maps equal two separate STFTs up to float
    rounding. Saves 44 % of the STFTs of two 2 s views half a video window apart (226 + 7 frames for 402)."""
    inside, head, kept = union_edges(mel, num_samples)
    whole = audio_power(union, mel)
    zero = fn.cast(shift * 0, dtype=types.INT32)
    pieces1 = [fn.slice(whole, fn.stack(zero), types.Constant(np.array([inside], np.int32)), axes=[0])]
    if inside < kept:
        pieces1.append(_edge_power(wave1, mel, inside, kept - inside))
    pieces2 = [_edge_power(wave2, mel, 0, head)]
    if head < kept:
        first = fn.cast(shift, dtype=types.INT32) + head
        pieces2.append(fn.slice(whole, fn.stack(first), types.Constant(np.array([kept - head], np.int32)), axes=[0]))
    return _join_frames(pieces1), _join_frames(pieces2)


def _join_frames(pieces: list[DataNode]) -> DataNode:
    return pieces[0] if len(pieces) == 1 else fn.cat(*pieces, axis=0)


def _resize_2d(spec: DataNode, height: int, width, interp=types.INTERP_LINEAR, draws: Draws = DALI_MATH) -> DataNode:
    """Resize a 2-D map (treated as a 1-channel image) to (height, width); width may be per-sample."""
    image = fn.reshape(fn.expand_dims(spec, axes=[2]), layout="HWC")
    if isinstance(width, (int, float)):
        size = [float(height), float(width)]
    else:
        size = draws.node(draws.stack(float(height), width))
    out = fn.resize(image, size=size, interp_type=interp, antialias=False)
    return fn.squeeze(out, axes=[2])


_PIXELS = dict(normalized_anchor=False, normalized_shape=False)  # slice anchors/shapes in elements


def _time_warp(spec: DataNode, aug: AudioAugment, n_mels: int, n_frames: int, draws: Draws) -> DataNode:
    """SpecAugment time warp: the frame at ``w0`` moves to ``w0 + d`` (|d| < window), both sides
    resized linearly (as s3prl's implementation, which the paper uses)."""
    window = min(aug.time_warp_window, max(n_frames // 2 - 1, 1))
    centre = draws.floor(draws.uniform(float(window), float(n_frames - window), name="audio.time_warp_centre"))
    shift = draws.floor(draws.uniform(float(-window + 1), float(window), name="audio.time_warp_shift"))
    left = fn.slice(spec, draws.node(draws.stack(0.0, 0.0 * centre)), draws.node(draws.stack(float(n_mels), centre)),
                    axes=[0, 1], **_PIXELS)
    right = fn.slice(spec, draws.node(draws.stack(0.0, centre)), draws.node(draws.stack(float(n_mels), n_frames - centre)),
                     axes=[0, 1], **_PIXELS)
    left = _resize_2d(left, n_mels, centre + shift, draws=draws)
    right = _resize_2d(right, n_mels, n_frames - centre - shift, draws=draws)
    return fn.cat(left, right, axis=1)


def _masks(spec: DataNode, aug: AudioAugment, n_mels: int, n_frames: int, draws: Draws) -> DataNode:
    """SpecAugment masks (width uniform in {0..max}, position uniform), filled with 0 = the mean."""
    anchors, shapes = [], []
    regions = [(0, aug.freq_mask_max, n_mels)] * (aug.freq_mask_num if aug.freq_mask else 0)
    regions += [(1, aug.time_mask_max, n_frames)] * (aug.time_mask_num if aug.time_mask else 0)
    for axis, max_width, extent in regions:
        kind = "freq" if axis == 0 else "time"
        width = draws.floor(draws.uniform(0.0, max_width + 1.0 - 1e-3, name=f"audio.{kind}_mask_width"))
        start = draws.floor(draws.uniform(0.0, 1.0, name=f"audio.{kind}_mask_start") * (extent - width + 1.0 - 1e-3))
        other_extent = float(n_frames if axis == 0 else n_mels)
        if axis == 0:
            anchors += [start, 0.0]
            shapes += [width, other_extent]
        else:
            anchors += [0.0, start]
            shapes += [other_extent, width]
    if not anchors:
        return spec
    spec = fn.reshape(spec, layout="HW")
    return fn.erase(spec, anchor=draws.node(draws.stack(*anchors)), shape=draws.node(draws.stack(*shapes)),
                    axis_names="HW", fill_value=0.0)


def _random_resized_crop(spec: DataNode, aug: AudioAugment, n_mels: int, n_frames: int, draws: Draws) -> DataNode:
    """BYOL-A RandomResizeCrop: centre the map on a zero canvas ``virtual_scale`` times its size,
    crop a box of (freq, time) = (U(freq_scale) F, U(time_scale) T) clipped to the canvas at a
    uniform position, resize it back to (F, T) bicubically."""
    canvas_f = int(n_mels * aug.crop_virtual_scale[0])
    canvas_t = int(n_frames * aug.crop_virtual_scale[1])
    box_f = draws.clamp(draws.floor(draws.uniform(*aug.crop_freq_scale, name="audio.crop_freq_scale") * n_mels), 1.0, float(canvas_f))
    box_t = draws.clamp(draws.floor(draws.uniform(*aug.crop_time_scale, name="audio.crop_time_scale") * n_frames), 1.0, float(canvas_t))
    top = draws.floor(draws.uniform(0.0, 1.0, name="audio.crop_top") * (canvas_f - box_f + 1.0 - 1e-3))
    left = draws.floor(draws.uniform(0.0, 1.0, name="audio.crop_left") * (canvas_t - box_t + 1.0 - 1e-3))
    # Canvas coordinates -> input coordinates (the input sits centred on the canvas).
    top = top - float((canvas_f - n_mels) // 2)
    left = left - float((canvas_t - n_frames) // 2)
    box = fn.slice(
        spec,
        draws.node(draws.stack(top, left)),
        draws.node(draws.stack(box_f, box_t)),
        axes=[0, 1],
        normalized_anchor=False,  # float anchor/shape would otherwise be read as fractions
        normalized_shape=False,
        out_of_bounds_policy="pad",
        fill_values=0.0,
    )
    return _resize_2d(box, n_mels, n_frames, interp=types.INTERP_CUBIC)


def augment_audio(wave: DataNode, aug: AudioAugment, mel: LogMel, num_samples: int, draws: Draws) -> DataNode:
    """float32 waveform ``[N]`` -> ``[1, mel.bins, N // hop]`` float32 front end (normalised unless logfbank)."""
    return augment_audio_power(audio_power(wave, mel), aug, mel, num_samples, draws)


def augment_audio_power(power: DataNode, aug: AudioAugment, mel: LogMel, num_samples: int, draws: Draws) -> DataNode:
    """A view's ``audio_power`` map (of the wave before the volume jitter) -> ``[1, mel.bins, N // hop]``:
    volume jitter (a gain g on the wave is g^2 on the power), features, normalisation, [time warp],
    masks, random resized crop."""
    if aug.volume:
        gain = draws.uniform(1.0 - aug.volume_range, 1.0 + aug.volume_range, name="audio.volume")
        power = power * draws.node(gain * gain)
    spec = power_to_features(power, mel, num_samples)
    if mel.normalized:
        spec = (spec - mel.mean) * (1.0 / mel.std)
    n_frames = mel.frames(num_samples)
    if aug.time_warp:
        spec = _time_warp(spec, aug, mel.bins, n_frames, draws)
    spec = _masks(spec, aug, mel.bins, n_frames, draws)
    if aug.random_crop:
        spec = _random_resized_crop(spec, aug, mel.bins, n_frames, draws)
    return fn.expand_dims(fn.reshape(spec, layout=""), axes=[0])
