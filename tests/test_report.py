"""The report stage: tables from hand-made artefacts with known confusion matrices, valid PNGs, one
self-contained index.html, clear errors, and a qualitative grid from a tiny real checkpoint."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pointparse.cache import StageCache
from pointparse.cli.report import parse_runs, report_cmd
from pointparse.errors import ConfigError, DataError
from pointparse.metrics import SegMetrics
from pointparse.report import build_report, default_run_name, discover_runs, load_run, read_extension_table
from pointparse.stages.report import run_report

torch.set_num_threads(1)

CLASSES = ["sky", "road", "car"]
DATASET_FP = {"kind": "folder", "split": "train", "files": "abc"}
# rows = ground truth, columns = prediction; "car" never occurs: IoU NaN
CM_FULL = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])   # IoU sky 8/11, road 9/12
CM_POINTS = np.array([[6, 4, 0], [3, 7, 0], [0, 0, 0]])  # IoU sky 6/13, road 7/14
CM_PDML = np.array([[7, 3, 0], [2, 8, 0], [0, 0, 0]])    # IoU sky 7/12, road 8/13
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_points(folder: Path, key: str, num_images=4, num_points=10, labelled=4000) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"stage": "make-points", "key": key,
                                                      "inputs": {"dataset": DATASET_FP}}))
    (folder / "stats.json").write_text(json.dumps({
        "num_images": num_images, "num_points": num_points, "labelled_pixels": labelled,
        "annotated_pixel_ratio": num_points / labelled, "points_per_image": {"mean": num_points / num_images}}))
    return folder


def _write_metrics(folder: Path, cm: np.ndarray, classes=CLASSES, images=4, confusion=True) -> None:
    d = SegMetrics.from_matrix(cm).to_dict(classes, f"toy-{len(classes)}")
    d["images"] = images
    (folder / "metrics.json").write_text(json.dumps(d))
    if confusion:
        np.save(folder / "confusion.npy", cm.astype(np.int64))


def _write_train(folder: Path, key: str, cm: np.ndarray, points: Path | None, classes=CLASSES, epochs=3,
                 **train) -> Path:
    """A train artefact as run_train leaves it, minus the checkpoint."""
    folder.mkdir(parents=True)
    cfg = {"supervision": "points", "pdml": True, "alpha": 0.8, "beta": 1.0, "margin": 20.0, "extension": "none",
           "threshold": 0.7, "region": 5, "backbone": "efficientnet_lite0", "epochs": epochs}
    cfg.update(train)
    man = {"stage": "train", "key": key, "params": {"train": cfg, "val_split": "val"},
           "inputs": {"dataset": DATASET_FP, **({"points": points.name} if points else {})},
           "points_dir": str(points) if points else None,
           "dataset_spec": {"kind": "folder", "root": "/nonexistent", "split": "train", "options": {}}}
    (folder / "manifest.json").write_text(json.dumps(man))
    _write_metrics(folder, cm, classes)
    rng = np.random.default_rng(len(key))
    rows, dist = [], {}
    for e in range(epochs):
        row = {"epoch": e, "loss": 3.0 - e * 0.5, "ce": 2.0 - e * 0.4, "pdml": 0.0, "lr": 0.01}
        if cfg["pdml"] and cfg["supervision"] == "points":
            row.update(pdml=1.0 - 0.1 * e, dis_pos=10.0 - e, dis_neg=11.0 + e, triples_per_step=50.0)
            dist[f"pos_{e}"] = rng.gamma(4.0, 2.5 - 0.5 * e, 400).astype(np.float32)
            dist[f"neg_{e}"] = rng.gamma(4.0, 2.5 + 0.5 * e, 400).astype(np.float32)
        if cfg["extension"] != "none":
            row.update(ext_accuracy=0.5 + 0.1 * e, ext_coverage=0.01 * (e + 1), ext_pixels_per_image=20.0 * (e + 1))
        rows.append(row)
    (folder / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if dist:
        np.savez_compressed(folder / "distances.npz", **dist)
    return folder


@pytest.fixture()
def three_runs(tmp_path) -> dict[str, Path]:
    pts = _write_points(tmp_path / "points" / "p1", "p1")
    return {
        "fullsup": _write_train(tmp_path / "t_full", "k_full", CM_FULL, None, supervision="full", pdml=False),
        "pointsup": _write_train(tmp_path / "t_pts", "k_pts", CM_POINTS, pts, pdml=False),
        "pdml+ext": _write_train(tmp_path / "t_pdml", "k_pdml", CM_PDML, pts, extension="score+region"),
    }


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 8000, (path, len(data))
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= 500 and im.size[1] >= 300, (path, im.size)


def test_tables_from_known_confusion_matrices(three_runs, tmp_path):
    out = build_report(three_runs, tmp_path / "report", qualitative_images=0, cache=StageCache(tmp_path / "cache"))

    per_class = pd.read_csv(out / "per_class_iou.csv", index_col="run")
    assert list(per_class.index) == ["fullsup", "pointsup", "pdml+ext"]
    assert list(per_class.columns) == [*CLASSES, "mIoU"]
    assert per_class.loc["fullsup", "sky"] == pytest.approx(8 / 11)
    assert per_class.loc["fullsup", "road"] == pytest.approx(9 / 12)
    assert per_class.loc["pointsup", "sky"] == pytest.approx(6 / 13)
    assert per_class.loc["pdml+ext", "road"] == pytest.approx(8 / 13)
    assert per_class["car"].isna().all()  # absent from GT and predictions
    assert per_class.loc["fullsup", "mIoU"] == pytest.approx((8 / 11 + 9 / 12) / 2)

    summary = pd.read_csv(out / "summary.csv")
    assert summary.shape[0] == 3
    for col in ("run", "supervision", "pdml", "extension", "miou", "pixel_acc", "annotated_pixels_per_image",
                "annotation_ratio_to_full"):
        assert col in summary.columns
    s = summary.set_index("run")
    assert s.loc["fullsup", "supervision"] == "full" and not s.loc["fullsup", "pdml"]
    assert s.loc["pdml+ext", "extension"] == "score+region" and s.loc["pdml+ext", "pdml"]
    assert s.loc["pointsup", "pixel_acc"] == pytest.approx(13 / 20)
    assert s.loc["pdml+ext", "miou"] == pytest.approx((7 / 12 + 8 / 13) / 2)
    # clicks per image (10 / 4) and, for full supervision, labelled training pixels per image (4000 / 4)
    assert s.loc["pointsup", "annotated_pixels_per_image"] == pytest.approx(2.5)
    assert s.loc["pointsup", "annotation_ratio_to_full"] == pytest.approx(10 / 4000)
    assert s.loc["fullsup", "annotated_pixels_per_image"] == pytest.approx(1000.0)
    assert s.loc["fullsup", "annotation_ratio_to_full"] == pytest.approx(1.0)

    assert not (out / "hyperparameters.csv").exists()  # one PDML setting only
    assert not (out / "extension.csv").exists()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["distance_histograms.png", "distances.png", "extension.png", "per_class_iou.png",
                    "training_curves.png"]
    for p in out.glob("*.png"):
        _assert_png(p)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(pngs)
    assert "src='per_class_iou.png'" not in page  # self-contained: no links to files
    assert "72.7" in page and "Table 3" in page and "Table 6" in page  # sky IoU of fullsup, in percent
    md = (out / "index.md").read_text(encoding="utf-8")
    assert all(f"]({p})" in md for p in pngs)
    info = json.loads((out / "report.json").read_text())
    assert "qualitative.png" in info["skipped"]


def test_hyperparameter_and_extension_tables(tmp_path):
    pts = _write_points(tmp_path / "points" / "p1", "p1")
    runs = {
        "a0": _write_train(tmp_path / "a0", "k_a0", CM_POINTS, pts, alpha=0.0),
        "a08": _write_train(tmp_path / "a08", "k_a08", CM_PDML, pts, alpha=0.8),
        "a08m8": _write_train(tmp_path / "a08m8", "k_a08m8", CM_PDML, pts, alpha=0.8, margin=8.0),
    }
    table = tmp_path / "extension_table.csv"
    table.write_text(" method , threshold,region,extension_acc,coverage,miou,time_s,extra\n"
                     "superpixel,,,0.836,0.31,0.267,2.0,x\n"
                     "score+region,0.7,5,0.982,0.017,0.300,1.0,y\n"
                     "score+region,0.9,5,0.984,0.015,0.294,1.0,z\n")
    out = build_report(runs, tmp_path / "report", extension=table, qualitative_images=0,
                       cache=StageCache(tmp_path / "cache"))
    hyper = pd.read_csv(out / "hyperparameters.csv")
    assert list(hyper["run"]) == ["a0", "a08m8", "a08"]  # sorted by beta, alpha, margin
    assert list(hyper["alpha"]) == [0.0, 0.8, 0.8] and list(hyper["margin"]) == [20.0, 8.0, 20.0]
    assert hyper.loc[0, "miou"] == pytest.approx((6 / 13 + 7 / 14) / 2)
    ext = pd.read_csv(out / "extension.csv")
    assert list(ext.columns[:4]) == ["label", "method", "threshold", "region"]
    assert "extra" in ext.columns and "new_pixels_per_image" not in ext.columns
    assert list(ext["label"]) == ["superpixel", "score+region (0.7)", "score+region (0.9)"]
    assert ext["extension_acc"].tolist() == pytest.approx([0.836, 0.982, 0.984])
    _assert_png(out / "extension.png")
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Table 4" in page and "Table 5" in page and "98.2%" in page and "5×5" in page


def test_runs_with_different_class_sets_are_refused(tmp_path):
    pts = _write_points(tmp_path / "points" / "p1", "p1")
    runs = {"three": _write_train(tmp_path / "a", "ka", CM_FULL, pts),
            "two": _write_train(tmp_path / "b", "kb", np.array([[3, 1], [1, 3]]), pts, classes=["sky", "road2"])}
    with pytest.raises(DataError, match=r"'two'.*2 classes.*'three' on 3.*lacks \['road', 'car'\]"):
        build_report(runs, tmp_path / "report", qualitative_images=0, cache=StageCache(tmp_path / "cache"))
    assert not (tmp_path / "report").exists()  # nothing half-written


def test_bad_inputs_give_clear_errors(tmp_path, three_runs):
    cache = StageCache(tmp_path / "cache")
    bad = tmp_path / "bad.csv"
    bad.write_text("name,acc\nx,1\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['method', 'extension_acc'\]"):
        read_extension_table(bad)
    no_metrics = _write_train(tmp_path / "nm", "k_nm", CM_FULL, None, supervision="full", pdml=False)
    (no_metrics / "metrics.json").unlink()
    with pytest.raises(DataError, match="no metrics.json"):
        load_run("x", no_metrics, cache)
    pts = tmp_path / "points" / "p1"
    with pytest.raises(DataError, match="'make-points' artefact"):
        load_run("x", pts, cache)
    wrong_cm = three_runs["fullsup"] / "confusion.npy"
    np.save(wrong_cm, np.eye(4, dtype=np.int64))
    with pytest.raises(DataError, match="shape"):
        load_run("x", three_runs["fullsup"], cache)
    with pytest.raises(ConfigError, match="at least one run"):
        build_report({}, tmp_path / "r", cache=cache)
    with pytest.raises(ConfigError, match="NAME=REF"):
        parse_runs(["nothing"])
    with pytest.raises(ConfigError, match="twice"):
        parse_runs(["a=x", "a=y"])
    assert parse_runs(["pdml α=0=abc123", "full=/p/q"]) == {"pdml α=0": "abc123", "full": "/p/q"}


def test_evaluate_artefact_run_and_discovery(tmp_path, three_runs):
    cache = StageCache(tmp_path / "cache")
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "manifest.json").write_text(json.dumps({"stage": "evaluate", "key": "k_eval",
                                                  "checkpoint": str(three_runs["pdml+ext"] / "model.pt"),
                                                  "inputs": {"dataset": {"kind": "folder", "split": "val"}}}))
    _write_metrics(ev, CM_FULL, confusion=False)  # IoUs from metrics.json alone
    run = load_run("ev", ev, cache)
    assert run.stage == "evaluate" and run.train_dir is None and run.supervision == "unknown"
    assert run.iou[:2] == pytest.approx([8 / 11, 9 / 12]) and math.isnan(run.iou[2])

    # discovery names train artefacts after their settings, in Table 3's row order
    for name, src in three_runs.items():
        key = json.loads((src / "manifest.json").read_text())["key"]
        dst = cache.root / "train" / key[:2] / key
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
    assert list(discover_runs(cache)) == ["fullsup", "pointsup", "pointsup+pdml+score+region"]
    assert default_run_name({"supervision": "points", "pdml": True, "alpha": 0.0}) == "pointsup+pdml(alpha=0)"


# ------------------------------------------------------------------------------------------------
# a tiny real checkpoint: qualitative grid, the cached stage and the CLI
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from pointparse.evaluate import EvalConfig
    from pointparse.simulate import MakePointsConfig
    from pointparse.dataspec import DatasetSpec
    from pointparse.stages.make_points import run_make_points
    from pointparse.stages.train import run_train
    from pointparse.train_config import TrainConfig

    cache = StageCache(tmp_path_factory.mktemp("cache"))
    spec = DatasetSpec(kind="synthetic", options={"seed": 3, "size": 64, "splits": {"train": 8, "val": 4}})
    pts = run_make_points(spec, MakePointsConfig(workers=0), cache, progress=False)
    cfg = TrainConfig(weights="none", epochs=2, batch_size=4, crop_size=48, workers=0, lr=1e-3, device="cpu")
    res = run_train(spec, cfg, cache, points=pts.path, val_split="val", eval_cfg=EvalConfig(workers=0, device="cpu"),
                    progress=False)
    return cache, res


def test_qualitative_grid_cached_stage_and_cli(real_run, tmp_path):
    cache, res = real_run
    runs = {"pdml": res.key, "pdml (again)": str(res.path)}
    rep = run_report(runs, cache, qualitative_images=2, device="cpu")
    assert not rep.cached
    _assert_png(rep.path / "qualitative.png")
    with Image.open(rep.path / "qualitative.png") as im:
        assert im.size[0] > im.size[1]  # 2 rows of 4 panels (image, GT, two runs)
    summary = pd.read_csv(rep.path / "summary.csv")
    assert summary["annotated_pixels_per_image"].iloc[0] > 0  # from the real points artefact
    page = (rep.path / "index.html").read_text(encoding="utf-8")
    assert len(re.findall(r"data:image/png;base64,", page)) == len(list(rep.path.glob("*.png")))
    again = run_report(runs, cache, qualitative_images=2, device="cpu")
    assert again.cached and again.path == rep.path
    other = run_report({"pdml (again)": str(res.path), "pdml": res.key}, cache, qualitative_images=2, device="cpu")
    assert other.key != rep.key  # the run order (colours, rows) is part of the key

    out = tmp_path / "copy"
    result = CliRunner().invoke(report_cmd, ["--run", f"pdml={res.key[:12]}", "--qualitative-images", "1",
                                             "--device", "cpu", "--cache-dir", str(cache.root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "index.html" in result.output and (out / "index.html").is_file() and (out / "qualitative.png").is_file()
    bad = CliRunner().invoke(report_cmd, ["--run", "pdml", "--cache-dir", str(cache.root)])
    assert bad.exit_code != 0 and "NAME=REF" in bad.output
    missing = CliRunner().invoke(report_cmd, ["--run", "x=/no/such/folder", "--cache-dir", str(cache.root)])
    assert missing.exit_code != 0 and "no such artefact" in missing.output


def test_qualitative_grid_with_a_moved_dataset_says_what_to_do(real_run, tmp_path):
    import shutil

    cache, res = real_run
    moved = tmp_path / "moved_run"
    shutil.copytree(res.path, moved)
    man = json.loads((moved / "manifest.json").read_text())
    man["dataset_spec"] = {"kind": "folder", "root": str(tmp_path / "gone"), "split": "train", "options": {}}
    (moved / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DataError, match="qualitative grid"):
        build_report({"moved": moved}, tmp_path / "report", qualitative_images=1, cache=cache, device="cpu")
    out = build_report({"moved": moved}, tmp_path / "report", qualitative_images=0, cache=cache)
    assert (out / "summary.csv").is_file() and not (out / "qualitative.png").exists()


def test_qualitative_grid_turns_when_many_runs_would_make_it_too_wide(tmp_path):
    from pointparse.report.qualitative import QUALITATIVE_MAX_COLUMNS, qualitative_grid

    gt = np.kron(np.arange(12, dtype=np.uint8).reshape(3, 4) % 3, np.ones((16, 16), np.uint8))  # [48, 64]
    samples = [{"name": f"a_rather_long_image_name_number_{i}_from_a_street", "image": np.zeros(gt.shape + (3,), np.uint8),
                "gt": gt, "preds": {}} for i in range(3)]

    def size(n_runs: int) -> tuple[int, int]:
        runs = [f"PDML+Ext w=0.1 from ep. 6[seed={k}]" for k in range(n_runs)]
        for s in samples:
            s["preds"] = {r: gt for r in runs}
        path = qualitative_grid(samples, runs, ["a", "b", "c"], [(0, 0, 0), (90, 90, 90), (200, 200, 200)],
                                tmp_path / f"q{n_runs}.png")
        return Image.open(path).size

    w_few, h_few = size(QUALITATIVE_MAX_COLUMNS - 2)  # fits: one row per image
    w_many, h_many = size(12)  # 14 panels per image: one row per panel
    assert w_few > h_few and h_many > w_many
    assert w_many < w_few  # three image columns instead of fourteen panel columns

def test_table4_gains_a_weight_column_only_when_runs_differ_in_it(tmp_path):
    pts = _write_points(tmp_path / "points" / "p1", "p1")
    same = {"a": _write_train(tmp_path / "a", "k_a", CM_PDML, pts)}
    runs = {**same, "w01": _write_train(tmp_path / "w01", "k_w01", CM_PDML, pts, pdml_weight=0.1)}
    out = build_report(runs, tmp_path / "report", qualitative_images=0, cache=StageCache(tmp_path / "cache"))
    hyper = pd.read_csv(out / "hyperparameters.csv")
    assert list(hyper["run"]) == ["w01", "a"] and list(hyper["pdml_weight"]) == [0.1, 1.0]
    assert "PDML weight" in (out / "index.md").read_text(encoding="utf-8")
    runs = {**same, "m8": _write_train(tmp_path / "m8", "k_m8", CM_PDML, pts, margin=8.0)}
    hyper = pd.read_csv(build_report(runs, tmp_path / "r2", qualitative_images=0,
                                     cache=StageCache(tmp_path / "cache")) / "hyperparameters.csv")
    assert "pdml_weight" not in hyper.columns


def test_out_never_replaces_a_folder_report_did_not_write(tmp_path):
    """`report --out DIR` on someone's non-empty folder is refused in one line before any work, and
    an earlier report --out is replaced (issue 15, item 2)."""
    cache = StageCache(tmp_path / "cache")
    run = _write_train(tmp_path / "runs" / "a", "a" * 64, CM_FULL, None, supervision="full", pdml=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    args = ["--run", f"full={run}", "--qualitative-images", "0", "--cache-dir", str(cache.root), "--out"]
    res = CliRunner().invoke(report_cmd, [*args, str(mine)])
    assert res.exit_code != 0 and "not an earlier output of report" in res.output and "Traceback" not in res.output
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert not (cache.root / "report").exists()  # refused before the report was computed
    out = tmp_path / "out"
    for _ in range(2):  # new, then an earlier output of report: replaced
        res = CliRunner().invoke(report_cmd, [*args, str(out)])
        assert res.exit_code == 0, res.output
        assert (out / "index.html").is_file()


def test_seeds_table_pairs_each_row_with_pointsup_and_marks_the_best(tmp_path):
    from pointparse.report import load_runs, seed_table

    pts = _write_points(tmp_path / "points" / "p1", "p1")
    def cm(correct):  # a 3-class matrix with the given share on the diagonal
        m = np.full((len(CLASSES), len(CLASSES)), 10, np.int64)
        np.fill_diagonal(m, correct)
        return m

    runs = {"FullSup": [_write_train(tmp_path / f"f{s}", f"kf{s}", cm(90), None, supervision="full", pdml=False, seed=s)
                        for s in (0, 1)],
            "PointSup": [_write_train(tmp_path / f"p{s}", f"kp{s}", cm(30 + 10 * s), pts, pdml=False, seed=s)
                         for s in (0, 1)],
            "Better": [_write_train(tmp_path / f"b{s}", f"kb{s}", cm(50 + 10 * s), pts, pdml=False, seed=s)
                       for s in (1, 0)]}  # given in another seed order: pairing goes by seed, not position
    out = build_report(runs, tmp_path / "report", qualitative_images=0, cache=StageCache(tmp_path / "cache"))
    table = pd.read_csv(out / "seeds.csv").set_index("run")
    miou = {c: SegMetrics.from_matrix(cm(c)).miou for c in (30, 40, 50, 60, 90)}
    assert table.loc["PointSup", "miou_mean"] == pytest.approx((miou[30] + miou[40]) / 2)
    assert table.loc["Better", "paired_diff_mean"] == pytest.approx((miou[50] - miou[30] + miou[60] - miou[40]) / 2)
    assert table.loc["Better", "paired_n"] == 2 and np.isnan(table.loc["PointSup", "paired_diff_mean"])
    assert bool(table.loc["Better", "best"]) and not table.loc[["FullSup", "PointSup"], "best"].any()
    html_text = (out / "index.html").read_text()
    assert "Table 3 over seeds" in html_text and "best" in html_text
    # one artefact per row still works, and the per-class table uses the first seed
    single = seed_table(load_runs({"PointSup": runs["PointSup"][0]}))
    assert single.loc[0, "n"] == 1 and np.isnan(single.loc[0, "miou_std"])


def test_table3_names_the_recipe_and_every_loss(tmp_path):
    pts = _write_points(tmp_path / "points" / "p1", "p1")
    runs = {"rec": _write_train(tmp_path / "r", "kr", CM_POINTS, pts, pdml=False, recipe="cpu-clicks",
                                class_balance="sqrt", crf_weight=0.3),
            "norm": _write_train(tmp_path / "n", "kn", CM_PDML, pts, pdml_variant="normalized", extension="agree")}
    out = build_report(runs, tmp_path / "report", qualitative_images=0, cache=StageCache(tmp_path / "cache"))
    summary = pd.read_csv(out / "summary.csv").set_index("run")
    assert summary.loc["rec", "recipe"] == "cpu-clicks" and summary.loc["rec", "crf_weight"] == 0.3
    assert summary.loc["norm", "pdml_variant"] == "normalized"
    md = (out / "index.md").read_text()
    assert "| rec | cpu-clicks |" in md and "class-balanced (sqrt) + Gated CRF 0.3" in md
    assert "| normalized | agree(0.7, 5×5) |" in md


def test_extension_rows_of_both_eq7_readings_carry_their_threshold(tmp_path):
    table = tmp_path / "extension_table.csv"
    table.write_text("method,threshold,region,extension_acc,new_pixels_per_image,coverage,time_s\n"
                     "region,,5,0.99,190,0.012,0.1\nscore+region,0.7,5,0.61,150,0.010,0.6\n"
                     "agree,0.7,5,0.998,94,0.006,0.7\nagree,0.9,5,0.999,81,0.005,0.7\n")
    labels = list(read_extension_table(table)["label"])
    assert labels == ["region", "score+region (0.7)", "agree (0.7)", "agree (0.9)"]
