"""The report's pages: ``index.md`` and a self-contained ``index.html`` (tables as HTML, figures as
base64 data URIs), with the tables formatted like the paper's.

:func:`display_tables` turns the DataFrames of :mod:`pointparse.report.tables` (fractions in
[0, 1]) into ``(title, caption, header, rows)`` of strings: IoU and accuracy in percent with one
decimal, ``–`` for unknown values, ratios to full supervision in scientific notation.
:func:`write_index` writes both pages from them, the runs and the figures.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd
from PIL import Image

from ..io import atomic_file
from .runs import RunData
from .tables import BASELINE_RUN


def _fmt_pct(v, digits: int = 1, sign: str = "") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.{digits}f}{sign}"


def _fmt_num(v, spec: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(float(v), spec)


def _fmt_ratio(v) -> str:
    """1 for full supervision, else scientific like the paper's 7.2×10⁻⁵."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return "1" if float(v) == 1.0 else f"{float(v):.2e}"


def _tick(v: bool) -> str:
    return "✓" if v else ""


def display_tables(summary, per_class, hyper, ext, seeds=None) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """[(title, caption, header, rows)] with numbers formatted like the paper."""
    out = []
    if seeds is not None:
        header = ["Run", "Seeds", "mIoU (mean ± std)", "Pixel acc", f"Paired diff. vs {BASELINE_RUN}", ""]
        rows = []
        for _, r in seeds.iterrows():
            spread = "" if r["miou_std"] != r["miou_std"] else f" ± {100 * r['miou_std']:.1f}"
            paired = "" if r["paired_diff_mean"] != r["paired_diff_mean"] else \
                f"{100 * r['paired_diff_mean']:+.1f}" + ("" if r["paired_diff_std"] != r["paired_diff_std"]
                                                          else f" ± {100 * r['paired_diff_std']:.1f}")
            rows.append([r["run"], r["seeds"], f"{100 * r['miou_mean']:.1f}{spread}", _fmt_pct(r["pixel_acc_mean"],
                         sign="%"), paired, "best" if r["best"] else ""])
        out.append(("Table 3 over seeds", "Each row's mIoU over its seeds (mean ± sample std) and the per-seed "
                    f"difference to {BASELINE_RUN} trained with the same seed; 'best' marks the point-supervised "
                    "row with the highest mean. seeds.csv has the numbers.", header, rows))
    header = ["Run", "Recipe", "FullSup", "PointSup", "PDML", "Online ext.", "Other losses", "mIoU", "Pixel acc",
              "Annotated px / image", "Ratio to full"]
    rows = []
    for _, r in summary.iterrows():
        mode = r["extension"] if r["extension"] != "none" else ""
        threshold = r["ext_threshold"] == r["ext_threshold"]
        region = not pd.isna(r["ext_region"])
        if mode == "agree" and threshold and region:  # Eq. 7 read as labelled candidates
            mode = f"agree({r['ext_threshold']:g}, {int(r['ext_region'])}×{int(r['ext_region'])})"
        else:
            if mode and "score" in mode and threshold:
                mode = mode.replace("score", f"score({r['ext_threshold']:g})")
            if mode and "region" in mode and region:
                mode = mode.replace("region", f"region({int(r['ext_region'])}×{int(r['ext_region'])})")
        pdml = "" if not r["pdml"] else ("✓" if r["pdml_variant"] in ("", "paper") else r["pdml_variant"])
        other = [f"class-balanced ({r['class_balance']})"] if r["class_balance"] not in ("", "none") else []
        if r["crf_weight"] > 0:
            other.append(f"Gated CRF {r['crf_weight']:g}")
        rows.append([r["run"], r["recipe"], _tick(r["supervision"] == "full"), _tick(r["supervision"] == "points"),
                     pdml, mode, " + ".join(other), _fmt_pct(r["miou"]), _fmt_pct(r["pixel_acc"], sign="%"),
                     _fmt_num(r["annotated_pixels_per_image"], ".1f"), _fmt_ratio(r["annotation_ratio_to_full"])])
    proto = ", ".join(sorted({str(p) for p in summary["protocol"]}))
    out.append(("Table 3 — quantitative results", f"Evaluation protocol: {proto}. mIoU in %, as in the paper. "
                "Annotated pixels per image: clicks per training image for point supervision, labelled ground-truth "
                "pixels per image for full supervision (sources in summary.csv).", header, rows))

    runs = list(per_class.index)
    header = ["Class", *runs]
    rows = [[c, *[_fmt_pct(per_class.loc[r, c]) for r in runs]] for c in per_class.columns]
    out.append(("Table 6 — per-class IoU", "IoU in %; – = class absent from both ground truth and prediction. "
                "per_class_iou.csv has one row per run.", header, rows))

    if hyper is not None:
        weight = "pdml_weight" in hyper.columns
        header = ["Run", "α", "β", "m"] + (["PDML weight"] if weight else []) + \
            ["mIoU", "Pixel acc", "last dis(+)", "last dis(−)"]
        rows = [[h["run"], _fmt_num(h["alpha"], "g"), _fmt_num(h["beta"], "g"), _fmt_num(h["margin"], "g")]
                + ([_fmt_num(h["pdml_weight"], "g")] if weight else [])
                + [_fmt_pct(h["miou"]), _fmt_pct(h["pixel_acc"], sign="%"), _fmt_num(h["dis_pos_last"]),
                   _fmt_num(h["dis_neg_last"])] for _, h in hyper.iterrows()]
        out.append(("Table 4 — PDML hyper-parameters", "PDML runs with their loss weights α, β and margin m.",
                    header, rows))
    if ext is not None:
        cols = [c for c in ("label", "region", "extension_acc", "coverage", "new_pixels_per_image", "miou",
                            "pixel_acc", "time_s") if c in ext.columns]
        names = {"label": "Method", "region": "Region", "extension_acc": "Extension acc", "coverage": "Coverage",
                 "new_pixels_per_image": "New px / image", "miou": "mIoU", "pixel_acc": "Pixel acc", "time_s": "Time (s)"}
        fmt = {"extension_acc": lambda v: _fmt_pct(v, sign="%"), "coverage": lambda v: _fmt_pct(v, sign="%"),
               "miou": _fmt_pct, "pixel_acc": lambda v: _fmt_pct(v, sign="%"),
               "new_pixels_per_image": lambda v: _fmt_num(v, ".1f"), "time_s": lambda v: _fmt_num(v, ".2f"),
               "region": lambda v: "" if v is None or pd.isna(v) else f"{int(v)}×{int(v)}", "label": str}
        rows = [[fmt[c](e[c]) for c in cols] for _, e in ext.iterrows()]
        out.append(("Table 5 — extension methods", "Extension accuracy = correct / evaluated new pixels; coverage = "
                    "labelled pixels after extension / labelled ground-truth pixels.", [names[c] for c in cols], rows))
    return out


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def write_index(out: Path, runs: list[RunData], tables, figs, skipped) -> None:
    """Write ``index.md`` and ``index.html`` into ``out``, which already holds the figures.

    ``tables``: :func:`display_tables`' output; ``figs``: [(PNG file name, caption)], embedded in the
    HTML page as data URIs; ``skipped``: {figure: why it was not drawn}.
    """
    md = ["# pointparse report", "", "Runs:", ""]
    for r in runs:
        md.append(f"- **{_md_cell(r.name)}**: {r.stage} artefact `{r.path}` (key `{r.key[:12]}`)")
    for title, caption, header, rows in tables:
        md += ["", f"## {title}", "", caption, "", "| " + " | ".join(map(_md_cell, header)) + " |",
               "|" + "|".join("---" for _ in header) + "|"]
        md += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
    md += ["", "## Figures", ""]
    for f, caption in figs:
        md += [f"![{f}]({f})", "", f"*{caption}*", ""]
    if skipped:
        md += ["Not drawn:", ""] + [f"- {f}: {why}" for f, why in skipped.items()]
    with atomic_file(out / "index.md") as tmp:
        tmp.write_text("\n".join(md) + "\n", encoding="utf-8")

    e = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>pointparse report</title><style>",
             "body{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}",
             "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:14px}",
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}",
             "th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}",
             ".wide{overflow-x:auto}figure{margin:1.5em 0}img{max-width:100%;border:1px solid #ddd}",
             "figure.scroll{overflow-x:auto}figure.scroll img{max-width:none}",
             "figcaption{color:#555;font-size:14px}code{font-size:13px}</style></head><body>",
             "<h1>pointparse report</h1><ul>"]
    for r in runs:
        parts.append(f"<li><b>{e(r.name)}</b>: {e(r.stage)} artefact <code>{e(str(r.path))}</code> "
                     f"(key <code>{e(r.key[:12])}</code>)</li>")
    parts.append("</ul>")
    for title, caption, header, rows in tables:
        parts.append(f"<h2>{e(title)}</h2><p>{e(caption)}</p><div class='wide'><table><tr>"
                     + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table></div>")
    parts.append("<h2>Figures</h2>")
    for f, caption in figs:
        data = base64.b64encode((out / f).read_bytes()).decode("ascii")
        with Image.open(out / f) as im:
            width = im.size[0]
        # a very wide figure (150 classes) keeps its size and scrolls: shrunk, its labels would be unreadable
        cls = " class='scroll'" if width > 1600 else ""
        parts.append(f"<figure{cls}><img alt='{e(f)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{e(caption)}</figcaption></figure>")
    if skipped:
        parts.append("<p>Not drawn:</p><ul>" + "".join(f"<li>{e(f)}: {e(w)}</li>" for f, w in skipped.items()) + "</ul>")
    parts.append("</body></html>")
    with atomic_file(out / "index.html") as tmp:
        tmp.write_text("\n".join(parts) + "\n", encoding="utf-8")

