"""Evaluator protocols on small arrays: retrieval by hand, SVM cost selection, results, plots."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from crisscross.evaluate.linear import COSTS, FeatureSet, SVMConfig, cv_splits, linear_svm, sample_scores
from crisscross.evaluate.plots import retrieval_grid, tsne_map
from crisscross.evaluate.report import ResultRow, collect_report, find_results, read_results, write_results
from crisscross.evaluate.retrieval import nearest_neighbours, recall_at_k, sample_means

# ---------------------------------------------------------------- retrieval, computed by hand
# gallery (class):  g0=[1,0] (A)   g1=[0,1] (B)   g2=[1,1] (B)   g3=[-5,0] (A)
# queries, with their neighbours by cosine angle worked out on paper:
#   q0=[1,0.1]  A: g0 5.7deg, g2 39.3, g1 84.3, g3 174.3  -> hit at 1
#   q1=[1,0.9]  A: g2 3.0,   g0 42.0, g1 48.0, g3 138.0  -> miss at 1, hit at 2
#   q2=[-1,-.2] B: g3 11.3,  g1 101.3, g2 146.3, g0 168.7 -> miss at 1, hit at 2
#   q3=[.3,1]   A: g1 16.7,  g2 28.3, g0 73.3, g3 106.7  -> miss at 1 and 2, hit at 3
GALLERY = np.array([[1, 0], [0, 1], [1, 1], [-5, 0]], dtype=np.float64)
GALLERY_LABELS = np.array(["A", "B", "B", "A"])
QUERIES = np.array([[1, 0.1], [1, 0.9], [-1, -0.2], [0.3, 1]], dtype=np.float64)
QUERY_LABELS = np.array(["A", "A", "B", "A"])


def test_neighbours_match_hand_computed_cosine_order():
    order = nearest_neighbours(QUERIES, GALLERY, 4)
    assert order.tolist() == [[0, 2, 1, 3], [2, 0, 1, 3], [3, 1, 2, 0], [1, 2, 0, 3]]


def test_recall_at_k_matches_hand_computed_values():
    got = recall_at_k(QUERIES, QUERY_LABELS, GALLERY, GALLERY_LABELS, ks=(1, 2, 3, 20))
    assert got == {1: 0.25, 2: 0.75, 3: 1.0}  # k=20 > gallery size is left out, not faked


def test_recall_is_cosine_so_scale_free_and_rejects_mismatched_dims():
    scaled = recall_at_k(QUERIES * 100.0, QUERY_LABELS, GALLERY * 0.01, GALLERY_LABELS, ks=(1, 2, 3))
    assert scaled == {1: 0.25, 2: 0.75, 3: 1.0}
    with pytest.raises(ValueError, match="same output width"):
        recall_at_k(QUERIES, QUERY_LABELS, np.ones((4, 3)), GALLERY_LABELS)


def test_sample_means_average_clips():
    clips = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    assert sample_means(clips).tolist() == [[2.0, 3.0], [8.0, 9.0]]


# ---------------------------------------------------------------- linear SVM protocol
def _blobs(n_per_class: int, n_classes: int, clips: int, dim: int, seed: int, noise: float = 1.0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(size=(n_classes, dim)) * 2.0
    labels = np.repeat(np.arange(n_classes), n_per_class)
    feats = centres[labels][:, None, :] + noise * rng.normal(size=(len(labels), clips, dim))
    groups = np.arange(len(labels)) // 2  # pairs of samples share a "source"
    return FeatureSet([f"s{seed}_{i}" for i in range(len(labels))], feats.astype(np.float32), labels, groups)


def test_cv_splits_keep_groups_on_one_side():
    train = _blobs(6, 3, clips=2, dim=4, seed=0)
    for fit_rows, val_rows in cv_splits(train, 3, seed=0):
        assert not set(train.groups[fit_rows]) & set(train.groups[val_rows])
        assert sorted(np.concatenate([fit_rows, val_rows]).tolist()) == list(range(len(train.keys)))


def test_svm_cost_is_chosen_without_looking_at_test_labels():
    train, test = _blobs(8, 3, clips=3, dim=6, seed=1, noise=2.0), _blobs(5, 3, clips=4, dim=6, seed=2, noise=2.0)
    cfg = SVMConfig(cv_folds=3, n_jobs=1)
    honest = linear_svm(train, test, cfg)
    shuffled = FeatureSet(test.keys, test.features, np.random.default_rng(0).permutation(test.labels), test.groups)
    other = linear_svm(train, shuffled, cfg)
    assert honest.cost == other.cost and honest.cv_accuracy == other.cv_accuracy  # test labels played no part
    assert honest.cost in COSTS and set(honest.test_accuracy_per_cost) == set(COSTS)
    assert honest.accuracy == honest.test_accuracy_per_cost[honest.cost]
    assert honest.best_test_accuracy >= honest.accuracy
    assert honest.accuracy > 0.8  # three well separated blobs


def test_svm_parallel_sweep_equals_serial_and_is_deterministic():
    train, test = _blobs(6, 4, clips=2, dim=5, seed=3, noise=1.5), _blobs(3, 4, clips=3, dim=5, seed=4, noise=1.5)
    serial = linear_svm(train, test, SVMConfig(cv_folds=3, n_jobs=1))
    parallel = linear_svm(train, test, SVMConfig(cv_folds=3, n_jobs=2))
    again = linear_svm(train, test, SVMConfig(cv_folds=3, n_jobs=2))
    for r in (parallel, again):
        assert (r.cost, r.accuracy, r.cv_accuracy, r.test_accuracy_per_cost) == (
            serial.cost, serial.accuracy, serial.cv_accuracy, serial.test_accuracy_per_cost)


def test_sample_prediction_is_the_mean_of_clip_scores():
    class Fixed:  # a "model" whose clip scores we choose
        classes_ = np.array([0, 1, 2])

        def decision_function(self, x):
            return x

    # sample 0: clip votes 0, 0, 2 but the mean score favours class 2
    feats = np.array([[[1.0, 0, 0], [1.0, 0, 0], [0, 0, 5.0]]], dtype=np.float32)
    scores = sample_scores(Fixed(), FeatureSet(["k"], feats, np.array([2])), 3)
    assert scores.argmax(axis=1).tolist() == [2]
    np.testing.assert_allclose(scores[0], [2 / 3, 0, 5 / 3])


def test_svm_config_rejects_unknown_and_unsorted_options():
    with pytest.raises(ValueError, match="unknown"):
        SVMConfig.from_dict({"cost": [1.0]})
    with pytest.raises(ValueError, match="increasing"):
        SVMConfig.from_dict({"costs": [1.0, 0.1]})


# ---------------------------------------------------------------- results and report
def _row(**kw) -> ResultRow:
    base = dict(task="linear", dataset="esc50", split="mean", protocol="svm, cost by 5-fold grouped CV on train",
                metric="top1", value=0.8123, checkpoint_sha="abc123", modality="audio", input="audio 2.0s",
                pretrain="KS")
    base.update(kw)
    return ResultRow(**base)


def test_results_roundtrip_and_paper_layout(tmp_path):
    rows = [
        _row(),
        _row(split="fold1", value=0.7),
        _row(protocol="svm, best cost on test (comparison only)", value=0.99),
        _row(task="retrieval", dataset="ucf101", split="split1", modality="video->video", metric="R@5",
             value=0.5, input="8x112^2", protocol="cosine NN"),
        _row(task="finetune", dataset="hmdb51", split="split1", modality="video", input="8x224^2", value=0.3,
             protocol="finetune, last epoch"),
        _row(dataset="demo", split="test", value=0.625),
    ]
    path = write_results(tmp_path / "run", rows, timing={"features": 1.0}, run={"command": "test"})
    assert not list((tmp_path / "run").glob("*.tmp"))
    assert read_results(path) == rows
    assert json.loads(path.read_text())["timing_s"] == {"features": 1.0}
    assert "| 81.2 |" in (tmp_path / "run" / "results.md").read_text()

    report = collect_report(read_results(find_results([tmp_path])[0]))
    table4 = report.split("**Table 6")[0]
    assert "| ESC50 | 81.2 |" in table4 and "99.0" not in table4  # the mean, never the test-selected one
    assert "| KS (8x224^2) | - | 30.0 |" in report  # Table 6: finetune HMDB51
    assert "| KS | - | 50.0 | - | - | - | - |" in report  # Table 7: UCF101 R@5
    table8 = report.split("**Table 8")[1].split("**Other")[0]
    assert "| ESC50 | 81.2 |" in table8
    assert "comparison only" in report.split("**Selected on the test set")[1]
    assert "| demo |" in report.split("**Other results")[1]


def test_read_results_rejects_foreign_json(tmp_path):
    (tmp_path / "results.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="not a crisscross-results"):
        read_results(tmp_path / "results.json")


# ---------------------------------------------------------------- plots
def _colour_pixels(image: np.ndarray, hex_colour: str) -> int:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255.0
    return int((np.abs(image[..., :3] - rgb).max(axis=-1) < 0.02).sum())


def test_retrieval_grid_marks_matches_green_and_mismatches_red(tmp_path):
    frame = np.full((16, 16, 3), 128, dtype=np.uint8)
    path = retrieval_grid(tmp_path / "grid.png", [frame], ["dog"], [[frame, frame]], [["dog", "rain"]])
    image = mpimg.imread(path)
    assert _colour_pixels(image, "#1a9850") > 20 and _colour_pixels(image, "#d73027") > 20
    only_match = mpimg.imread(retrieval_grid(tmp_path / "g2.png", [frame], ["dog"], [[frame]], [["dog"]]))
    assert _colour_pixels(only_match, "#d73027") == 0


def test_tsne_map_writes_an_image(tmp_path):
    feats = _blobs(5, 3, clips=1, dim=8, seed=5)
    path = tsne_map(tmp_path / "tsne.png", feats.features[:, 0], [str(c) for c in feats.labels])
    assert mpimg.imread(path).shape[0] > 100


def test_eval_report_command_collects_results_from_folders(tmp_path, capsys):
    from crisscross.tools.cli import main

    write_results(tmp_path / "runs" / "a", [_row()], timing={}, run={})
    write_results(tmp_path / "runs" / "b", [_row(dataset="dcase", value=0.9)], timing={}, run={})
    assert main(["eval", "report", str(tmp_path / "runs"), "--out", str(tmp_path / "report.md")]) == 0
    text = (tmp_path / "report.md").read_text()
    table8 = text.split("**Table 8")[1]
    assert "| ESC50 | 81.2 |" in table8 and "| DCASE | 90.0 |" in table8
    capsys.readouterr()
    # a missing input is a one-line error and exit code 2 (the CLI's error rule), not a traceback
    assert main(["eval", "report", str(tmp_path / "missing")]) == 2
    assert "no such results file or folder" in capsys.readouterr().err


def test_report_averages_official_splits_measured_by_separate_runs():
    rows = [_row(dataset="ucf101", modality="video", input="8x224^2", split=f"split{i}", value=v)
            for i, v in ((1, 0.5), (2, 0.6), (3, 0.7))]
    table4 = collect_report(rows).split("**Table 6")[0]
    assert "| UCF101 | 60.0 |" in table4


def test_rows_of_ucf101_shards_are_named_after_their_official_split(tmp_path):
    from crisscross.evaluate.pipeline import _split_name

    (tmp_path / "dataset.json").write_text(json.dumps({"build": {"adapter": "ucf101", "split": 2}}))
    assert _split_name(tmp_path) == "split2"
    (tmp_path / "dataset.json").write_text(json.dumps({"build": {"adapter": "auto", "split": 1}}))
    assert _split_name(tmp_path) == "test"


def test_partitions_leave_out_samples_lacking_the_evaluated_modality():
    from crisscross.evaluate.config import EvalConfig
    from crisscross.evaluate.features import SampleInfo
    from crisscross.evaluate.pipeline import partitions

    manifest = {k: SampleInfo(k, "dog", 0, split, -1, k, mods)
                for k, split, mods in (("a", "train", "av"), ("b", "train", "a"), ("c", "test", "av"), ("d", "test", "v"))}
    video = partitions(manifest, EvalConfig(splits="split"), needs=("video",))[0]
    assert (video.train_keys, video.test_keys) == (["a"], ["c", "d"])
    both = partitions(manifest, EvalConfig(splits="split"), needs=("video", "audio"))[0]
    assert (both.train_keys, both.test_keys) == (["a"], ["c"])


def test_linear_fc_learns_separable_features_deterministically():
    from crisscross.evaluate.fc import FCConfig, linear_fc

    train, test = _blobs(10, 3, clips=3, dim=6, seed=6), _blobs(5, 3, clips=4, dim=6, seed=7)
    cfg = FCConfig(epochs=15, batch_size=16, milestones=[10])
    first, second = linear_fc(train, test, cfg, num_classes=3), linear_fc(train, test, cfg, num_classes=3)
    assert first == second
    assert first.accuracy > 0.8 and first.epochs == 15
    with pytest.raises(ValueError, match="unknown config key 'fc.epoch'"):
        FCConfig.from_dict({"epoch": 3})
