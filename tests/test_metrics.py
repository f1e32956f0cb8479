"""Confusion matrix and segmentation metrics on hand-made cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pointparse.errors import ConfigError
from pointparse.evaluate import ConfusionMatrix
from pointparse.metrics import SegMetrics


def test_update_counts_rows_gt_cols_pred_and_ignores_255():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1, 1], [2, 255, 1, 7]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 2, 0]])
    cm.update(pred, target)
    expected = torch.tensor([[1, 1, 0], [0, 2, 1], [1, 0, 0]])
    assert torch.equal(cm.mat, expected) and cm.mat.dtype == torch.int64
    cm.update(pred, target)
    assert torch.equal(cm.mat, 2 * expected)
    cm.reset()
    assert cm.mat.sum() == 0
    assert cm.all_reduce() is cm  # no process group: no-op


def test_metrics_from_hand_made_matrix():
    # classes: 0, 1, 2 (predicted, never in GT), 3 (absent from both)
    m = np.array([[3, 1, 0, 0], [2, 4, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    s = SegMetrics.from_matrix(m)
    assert s.iou[0] == pytest.approx(3 / (4 + 5 - 3))
    assert s.iou[1] == pytest.approx(4 / (8 + 5 - 4))
    assert s.iou[2] == 0.0
    assert math.isnan(s.iou[3])
    assert s.miou == pytest.approx((3 / 6 + 4 / 9 + 0) / 3)
    assert s.pixel_acc == pytest.approx(7 / 12)
    assert s.acc[0] == pytest.approx(0.75) and s.acc[1] == pytest.approx(0.5)
    assert math.isnan(s.acc[2]) and math.isnan(s.acc[3])
    assert s.mean_acc == pytest.approx(0.625)
    assert s.gt_pixels.tolist() == [4, 8, 0, 0] and s.pred_pixels.tolist() == [5, 5, 2, 0]
    assert s.iou.dtype == np.float64


def test_compute_matches_from_matrix():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 255]))
    s = cm.compute()
    assert s.iou.tolist() == pytest.approx([0.5, 0.5])
    assert s.pixel_acc == pytest.approx(2 / 3)


def test_to_dict_is_json_safe_and_names_protocol():
    s = SegMetrics.from_matrix(np.array([[2, 0, 0], [0, 0, 0], [1, 0, 1]]))
    d = s.to_dict(["wall", "sky", "tree"], protocol="toy-3")
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["protocol"] == "toy-3" and back["num_classes"] == 3
    assert back["per_class"][1] == {"class": "sky", "iou": None, "acc": None, "gt_pixels": 0, "pred_pixels": 0}
    assert back["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    with pytest.raises(ConfigError, match="2 class names"):
        s.to_dict(["a", "b"], protocol="x")


def test_per_class_frame():
    s = SegMetrics.from_matrix(np.array([[1, 1], [0, 2]]))
    df = s.per_class_frame(["a", "b"])
    assert list(df.columns) == ["class", "iou", "acc", "gt_pixels", "pred_pixels"]
    assert df["class"].tolist() == ["a", "b"]
    assert df["iou"].tolist() == pytest.approx([0.5, 2 / 3])
    assert df["gt_pixels"].tolist() == [2, 2]


def test_empty_matrix_gives_nan_not_errors():
    s = ConfusionMatrix(3).compute()
    assert math.isnan(s.miou) and math.isnan(s.pixel_acc) and math.isnan(s.mean_acc)
    assert s.to_dict(protocol="p")["miou"] is None


def test_bad_inputs():
    with pytest.raises(ConfigError):
        ConfusionMatrix(0)
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shapes differ"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="0..2"):
        cm.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="square"):
        SegMetrics.from_matrix(np.zeros((2, 3)))
