"""Weights import: official-format checkpoints -> export -> the same features as the official nets.

The official layer stacks are written out below from the published definitions (CrissCross
``evaluate/models/backbones``, AVID-CMA ``models/``, GDT ``model.py``/``src/vmz.py``, which is
torchvision's ``r2plus1d_18``), with the module names their state dicts carry, random weights and
random BatchNorm statistics (so that eval-mode normalisation is not the identity), saved the way
each release saves them.
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from crisscross.train.weights_import import WeightsImportError, import_release, read_release_file

torch.set_num_threads(2)


# ------------------------------------------------------------------------ official layer stacks
class OfficialR2P1DBlock(nn.Module):
    """CrissCross/AVID ``BasicR2P1DBlock``: spatial/temporal convs, BN after the residual sum."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.spt_conv1 = nn.Conv3d(cin, cout, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False)
        self.spt_bn1 = nn.BatchNorm3d(cout)
        self.tmp_conv1 = nn.Conv3d(cout, cout, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False)
        self.tmp_bn1 = nn.BatchNorm3d(cout)
        self.spt_conv2 = nn.Conv3d(cout, cout, (1, 3, 3), 1, (0, 1, 1), bias=False)
        self.spt_bn2 = nn.BatchNorm3d(cout)
        self.tmp_conv2 = nn.Conv3d(cout, cout, (3, 1, 1), 1, (1, 0, 0), bias=False)
        self.out_bn = nn.BatchNorm3d(cout)
        self.has_res = cin != cout or stride != 1
        if self.has_res:
            self.res_conv = nn.Conv3d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.spt_bn1(self.spt_conv1(x)))
        y = torch.relu(self.tmp_bn1(self.tmp_conv1(y)))
        y = self.tmp_conv2(torch.relu(self.spt_bn2(self.spt_conv2(y))))
        return torch.relu(self.out_bn(y + (self.res_conv(x) if self.has_res else x)))


class OfficialR2Plus1D18(nn.Module):
    """CrissCross/AVID ``R2Plus1D(depth=18)``; returns the conv5x map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv3d(3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False), nn.BatchNorm3d(64),
                                   nn.ReLU(), nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)))
        widths = [64, 128, 256, 512]
        for i, w in enumerate(widths):
            cin = 64 if i == 0 else widths[i - 1]
            setattr(self, f"conv{i + 2}x", nn.Sequential(OfficialR2P1DBlock(cin, w, 1 if i == 0 else 2),
                                                         OfficialR2P1DBlock(w, w)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv5x(self.conv4x(self.conv3x(self.conv2x(self.conv1(x)))))


class OfficialCrissCrossResNet(nn.Module):
    """CrissCross audio ``ResNet(depth=18)``: Sequential stem, ``block1..4`` of torchvision blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                   nn.MaxPool2d(3, 2, 1))
        cin = 64
        for i, w in enumerate([64, 128, 256, 512]):
            stride = 1 if i == 0 else 2
            down = (nn.Sequential(nn.Conv2d(cin, w, 1, stride, bias=False), nn.BatchNorm2d(w))
                    if stride != 1 or cin != w else None)
            setattr(self, f"block{i + 1}", nn.Sequential(BasicBlock(cin, w, stride, down), BasicBlock(w, w)))
            cin = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block4(self.block3(self.block2(self.block1(self.conv1(x)))))


class OfficialAVIDConv2D(nn.Module):
    """AVID-CMA audio ``Conv2D(depth=10)``: stem without max-pool, four plain two-conv blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        for i, (cin, cout, s) in enumerate([(64, 64, 2), (64, 128, 2), (128, 256, 2), (256, 512, 1)]):
            block = nn.Module()
            block.conv1 = nn.Conv2d(cin, cout, 3, s, 1, bias=False)
            block.bn1 = nn.BatchNorm2d(cout)
            block.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            block.bn2 = nn.BatchNorm2d(cout)
            setattr(self, f"block{i + 1}", block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for i in range(1, 5):
            b = getattr(self, f"block{i}")
            x = torch.relu(b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(x))))))
        return x


def gdt_video_base() -> nn.Module:
    """GDT's video base: torchvision-style ``r2plus1d_18`` (fc replaced by an identity)."""
    model = torchvision.models.video.r2plus1d_18()
    model.fc = nn.Identity()
    return model


def gdt_audio_base() -> nn.Module:
    """GDT's ``resnet9``: torchvision ResNet [1,1,1,1], 1-channel conv1; its fc stays (unused)."""
    model = torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1])
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model


def tv_features(model: nn.Module, x: torch.Tensor, video: bool) -> torch.Tensor:
    """Last conv map of a torchvision-style net (the official forward pools right after it)."""
    x = model.stem(x) if video else model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics, eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.dtype.is_floating_point:
                if name.endswith("running_var"):
                    tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
                elif name.endswith("weight") and tensor.dim() == 1:
                    tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
                elif tensor.dim() > 1:
                    fan_in = tensor[0].numel()
                    tensor.copy_(torch.randn(tensor.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                else:
                    tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
    return module.eval()


VIDEO_IN = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
AUDIO_IN = torch.randn(2, 1, 40, 64, generator=torch.Generator().manual_seed(2))


def export_features(out: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from crisscross.evaluate.features import load_encoders

    enc = load_encoders(str(out))
    with torch.no_grad():
        return enc.video.forward_features(VIDEO_IN), enc.audio.forward_features(AUDIO_IN), enc.model_cfg


# ------------------------------------------------------------------------ fixtures: release files
@pytest.fixture(scope="module")
def crisscross_release(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("crisscross_release")
    video, audio = randomize(OfficialR2Plus1D18(), 10), randomize(OfficialCrissCrossResNet(), 11)
    vid, aud = root / "vid_crisscross_kinetics_400.pth.tar", root / "aud_crisscross_kinetics_400.pth.tar"
    torch.save(video.state_dict(), vid)
    torch.save(audio.state_dict(), aud)
    # the GitHub release wraps each file in a .zip
    zipped = root / "vid_crisscross_kinetics_400.pth.tar.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.write(vid, vid.name)
    with torch.no_grad():
        expected = (video(VIDEO_IN), audio(AUDIO_IN))
    return {"video": vid, "audio": aud, "zipped": zipped, "expected": expected, "root": root}


@pytest.fixture(scope="module")
def avid_release(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("avid_release")
    video, audio = randomize(OfficialR2Plus1D18(), 20), randomize(OfficialAVIDConv2D(), 21)
    wrapper = nn.Module()
    wrapper.video_model, wrapper.audio_model = video, audio
    wrapper.video_proj = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
    wrapper.audio_proj = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
    model_state = {f"module.{k}": v for k, v in wrapper.state_dict().items()}  # saved through DataParallel
    ckpt = {"epoch": 20, "model": model_state, "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4}]},
            "train_criterion": {"nce_average.view1_mem": torch.randn(8, 128)}}
    path = root / "AVID-CMA_Kinetics_InstX-N1024-PosW-N64-Top32_checkpoint.pth.tar"
    # torch 1.x era file: the legacy (non-zip) serialisation
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    with torch.no_grad():
        expected = (video(VIDEO_IN), audio(AUDIO_IN))
    return {"file": path, "expected": expected, "root": root, "ckpt": ckpt}


@pytest.fixture(scope="module")
def gdt_release(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("gdt_release")
    video, audio = randomize(gdt_video_base(), 30), randomize(gdt_audio_base(), 31)
    wrapper = nn.Module()
    wrapper.video_network, wrapper.audio_network = nn.Module(), nn.Module()
    wrapper.video_network.base, wrapper.audio_network.base = video, audio
    wrapper.mlp_v, wrapper.mlp_a = nn.Linear(512, 256), nn.Linear(512, 256)
    ckpt = {"model": wrapper.state_dict(), "optimizer": {"state": {}, "param_groups": []},
            "lr_scheduler": {"last_epoch": 3}, "epoch": 4, "args": argparse.Namespace(lr=0.01, hypothesis=1)}
    path = root / "gdt_K400.pth"
    torch.save(ckpt, path)
    with torch.no_grad():
        expected = (tv_features(video, VIDEO_IN, True), tv_features(audio, AUDIO_IN, False))
    return {"file": path, "expected": expected, "root": root, "ckpt": ckpt}


# ------------------------------------------------------------------------ round trips
def test_crisscross_release_round_trip(crisscross_release, tmp_path):
    out = tmp_path / "export"
    report = import_release([crisscross_release["zipped"], crisscross_release["audio"]], "crisscross", out)
    official = {m: len(torch.load(crisscross_release[m], weights_only=True)) for m in ("video", "audio")}
    assert report.mapped == official  # every tensor of both files imported
    video, audio, cfg = export_features(out)
    ref_v, ref_a = crisscross_release["expected"]
    assert video.shape == ref_v.shape and audio.shape == ref_a.shape
    torch.testing.assert_close(video, ref_v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(audio, ref_a, rtol=1e-4, atol=1e-4)
    assert cfg["video_arch"] == "crisscross" and cfg["width"] == 64 and cfg["video_blocks"] == [2, 2, 2, 2]
    meta = json.loads((out / "backbones.json").read_text())
    assert meta["input"]["audio"]["logmel_mean"] == pytest.approx(-5.3688107)
    assert meta["source"]["release"] == "crisscross"
    assert meta["frontend"]["video"]["mean"] == [0.485, 0.456, 0.406]
    # the release's RGB normalisation is part of the input the evaluators apply (ImageNet statistics)
    assert meta["input"]["video"]["video_mean"] == [0.485, 0.456, 0.406]
    assert meta["input"]["video"]["video_std"] == [0.229, 0.224, 0.225]


def test_crisscross_files_in_either_order_and_unzipped(crisscross_release, tmp_path):
    report = import_release([crisscross_release["audio"], crisscross_release["video"]], "crisscross", tmp_path / "e")
    assert set(report.mapped) == {"video", "audio"}
    video, _, _ = export_features(tmp_path / "e")
    torch.testing.assert_close(video, crisscross_release["expected"][0], rtol=1e-4, atol=1e-4)


def test_crisscross_training_checkpoint_drops_only_documented_heads(crisscross_release, tmp_path):
    video = torch.load(crisscross_release["video"], weights_only=True)
    audio = torch.load(crisscross_release["audio"], weights_only=True)
    model = {f"module.video_backbone.{k}": v for k, v in video.items()}
    model |= {f"module.video_encoder.0.{k}": v for k, v in video.items()}  # nn.Sequential alias
    model |= {f"module.audio_backbone.{k}": v for k, v in audio.items()}
    model |= {"module.video_projector.layer1.0.weight": torch.randn(4, 4),
              "module.video_encoder.2.layer1.0.weight": None, "module.audio_predictor.layer2.weight": torch.randn(2)}
    model["module.video_encoder.2.layer1.0.weight"] = model["module.video_projector.layer1.0.weight"]
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"model": model, "epoch": 100, "optimizer": {"state": {}, "param_groups": []}}, path)
    report = import_release([path], "crisscross", tmp_path / "e")
    skipped = {k for keys in report.skipped.values() for k in keys}
    assert "video_projector.layer1.0.weight" in skipped and "audio_predictor.layer2.weight" in skipped
    assert "video_encoder.0.conv1.0.weight" in skipped  # alias, verified equal to the imported tensor
    v, a, _ = export_features(tmp_path / "e")
    torch.testing.assert_close(a, crisscross_release["expected"][1], rtol=1e-4, atol=1e-4)
    # an alias that does not hold the same tensor is not silently dropped
    model["module.video_encoder.0.conv1.0.weight"] = torch.zeros_like(model["module.video_encoder.0.conv1.0.weight"])
    torch.save({"model": model}, path)
    with pytest.raises(WeightsImportError, match="video_encoder.0.conv1.0.weight"):
        import_release([path], "crisscross", tmp_path / "e2")


def test_avid_cma_release_round_trip(avid_release, tmp_path):
    out = tmp_path / "export"
    report = import_release([avid_release["file"]], "avid-cma", out)
    video, audio, cfg = export_features(out)
    ref_v, ref_a = avid_release["expected"]
    torch.testing.assert_close(video, ref_v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(audio, ref_a, rtol=1e-4, atol=1e-4)
    assert cfg["audio_arch"] == "avid_conv2d" and cfg["video_pool"] == "max" and cfg["audio_pool"] == "max"
    video_input = json.loads((out / "backbones.json").read_text())["input"]["video"]
    assert video_input["video_mean"] == [0.485, 0.456, 0.406] and video_input["video_std"] == [0.229, 0.224, 0.225]
    heads = report.skipped["projection/prediction heads (not part of the backbones)"]
    assert len(heads) == 8 and all(k.split(".")[0] in ("video_proj", "audio_proj") for k in heads)


def test_gdt_release_round_trip(gdt_release, tmp_path):
    out = tmp_path / "export"
    report = import_release([gdt_release["file"]], "gdt", out)
    video, audio, cfg = export_features(out)
    ref_v, ref_a = gdt_release["expected"]
    torch.testing.assert_close(video, ref_v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(audio, ref_a, rtol=1e-4, atol=1e-4)
    assert cfg["video_arch"] == "tv_r2plus1d" and cfg["audio_blocks"] == [1, 1, 1, 1]
    video_input = json.loads((out / "backbones.json").read_text())["input"]["video"]
    assert video_input["video_mean"] == [0.45] * 3 and video_input["video_std"] == [0.225] * 3  # GDT's own
    assert report.skipped["parameters the official forward pass never uses"] == [
        "audio_network.base.fc.weight", "audio_network.base.fc.bias"]
    # pooled output = the official avgpool of the same map
    from crisscross.evaluate.features import load_encoders

    enc = load_encoders(str(out))
    with torch.no_grad():
        torch.testing.assert_close(enc.video(VIDEO_IN), ref_v.mean(dim=(2, 3, 4)), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------ bad input
def test_unmapped_and_missing_keys_are_listed(avid_release, tmp_path):
    ckpt = dict(avid_release["ckpt"])
    model = dict(ckpt["model"])
    model["module.video_model.conv6x.0.spt_conv1.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pth.tar"
    torch.save(dict(ckpt, model=model), path)
    with pytest.raises(WeightsImportError, match=r"conv6x\.0\.spt_conv1\.weight"):
        import_release([path], "avid-cma", tmp_path / "e")
    model = dict(ckpt["model"])
    del model["module.audio_model.block2.bn1.running_var"]
    torch.save(dict(ckpt, model=model), path)
    with pytest.raises(WeightsImportError, match=r"missing in the release.*stages\.1\.1\.running_var"):
        import_release([path], "avid-cma", tmp_path / "e")
    model = dict(ckpt["model"])
    model["module.mystery.weight"] = torch.zeros(1)
    torch.save(dict(ckpt, model=model), path)
    with pytest.raises(WeightsImportError, match="mystery.weight"):
        import_release([path], "avid-cma", tmp_path / "e")
    assert not (tmp_path / "e").exists()  # nothing written on failure


def test_shape_mismatch_is_an_error(crisscross_release, tmp_path):
    state = torch.load(crisscross_release["video"], weights_only=True)
    state["conv3x.0.spt_conv1.weight"] = torch.zeros(128, 64, 1, 5, 5)
    path = tmp_path / "vid.pth.tar"
    torch.save(state, path)
    with pytest.raises(WeightsImportError, match=r"stages\.1\.0\.spatial1\.weight: release \(128, 64, 1, 5, 5\)"):
        import_release([path, crisscross_release["audio"]], "crisscross", tmp_path / "e")


def test_corrupt_truncated_and_foreign_files(crisscross_release, avid_release, tmp_path):
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(WeightsImportError, match="not a PyTorch checkpoint"):
        read_release_file(garbage)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightsImportError, match="empty file"):
        read_release_file(empty)
    for source, _name in ((crisscross_release["video"], "zip format"), (avid_release["file"], "legacy format"),
                         (crisscross_release["zipped"], "release zip")):
        data = source.read_bytes()
        truncated = tmp_path / f"truncated-{source.name}"
        truncated.write_bytes(data[: len(data) // 2])
        with pytest.raises(WeightsImportError, match="corrupt|truncated"):
            read_release_file(truncated)
    # a zip that holds something else
    other = tmp_path / "notes.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("README.txt", "hello")
    with pytest.raises(WeightsImportError, match="neither a PyTorch file"):
        read_release_file(other)
    # a valid PyTorch file of another model
    foreign = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), foreign)
    with pytest.raises(WeightsImportError, match="not a checkpoint of the avid-cma release"):
        import_release([foreign], "avid-cma", tmp_path / "e")
    with pytest.raises(WeightsImportError, match="not a CrissCross backbone"):
        import_release([foreign, crisscross_release["audio"]], "crisscross", tmp_path / "e")
    # the wrong release for a real file
    with pytest.raises(WeightsImportError, match="not a checkpoint of the gdt release"):
        import_release([avid_release["file"]], "gdt", tmp_path / "e")
    # only one of CrissCross's two files
    with pytest.raises(WeightsImportError, match="pass both"):
        import_release([crisscross_release["video"]], "crisscross", tmp_path / "e")


class Pickled:
    """An arbitrary Python object: weights_only loading refuses it."""

    def __init__(self) -> None:
        self.value = 1


def test_pickled_objects_need_trust_pickle(crisscross_release, tmp_path):
    state = torch.load(crisscross_release["video"], weights_only=True)
    path = tmp_path / "pickled.pth.tar"
    torch.save({"model": state, "extra": Pickled()}, path)
    with pytest.raises(WeightsImportError, match="--trust-pickle"):
        read_release_file(path)
    loaded = read_release_file(path, trust_pickle=True)
    assert isinstance(loaded["extra"], Pickled)


# ------------------------------------------------------------------------ run.init_from
def _build_run_model(tmp_path: Path, overrides: list[str]) -> torch.nn.Module:
    from crisscross.train.config import resolve_config
    from crisscross.train.distributed import DistEnv
    from crisscross.train.objective import ObjectiveConfig
    from crisscross.train.trainer import build_model

    config = resolve_config("debug", [f"run.dir={tmp_path / 'run'}", *overrides])
    _, raw = build_model(config, ObjectiveConfig.from_dict(config["objective"]), DistEnv())
    return raw


def test_init_from_loads_an_imported_export_before_training(gdt_release, tmp_path):
    from crisscross.train.export import load_backbones

    out = tmp_path / "gdt"
    import_release([gdt_release["file"]], "gdt", out)
    _, _, cfg = load_backbones(out)
    arch = [f"model.{k}={json.dumps(v)}" for k, v in cfg.to_dict().items()
            if k in ("width", "video_blocks", "audio_blocks", "video_arch", "audio_arch", "norm")]
    raw = _build_run_model(tmp_path, [*arch, f"run.init_from={out}"])
    video, audio, _ = load_backbones(out)
    for ours, theirs in ((raw.video.encoder, video), (raw.audio.encoder, audio)):
        for key, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), key
    # without init_from the same config starts from a fresh initialisation
    fresh = _build_run_model(tmp_path, arch)
    assert not torch.equal(fresh.video.encoder.stem[0].weight, video.stem[0].weight)


def test_init_from_refuses_an_export_of_another_architecture(crisscross_release, tmp_path):
    out = tmp_path / "cc"
    import_release([crisscross_release["video"], crisscross_release["audio"]], "crisscross", out)
    with pytest.raises(ValueError, match=r"model\.width \(8 here, 64 in the export\)"):
        _build_run_model(tmp_path, [f"run.init_from={out}"])  # the debug preset's tiny model


def test_video_only_checkpoint_is_refused_by_name(gdt_release, tmp_path):
    """GDT's HowTo100M model is video-text: no audio network, so no complete export."""
    ckpt = dict(gdt_release["ckpt"])
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if not k.startswith(("audio_network.", "mlp_a."))}
    path = tmp_path / "gdt_HT100M.pth"
    torch.save(ckpt, path)
    with pytest.raises(WeightsImportError, match="gdt: no audio encoder"):
        import_release([path], "gdt", tmp_path / "e")
