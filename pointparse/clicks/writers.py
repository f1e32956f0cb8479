"""Click file writers: one per format, each writing the clicks of a points artefact
(:class:`ExportView`) at pixel centres, so that reading the file back gives the same pixels."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import DatasetInfo
from ..errors import DataError
from ..images import write_label_png
from ..io import atomic_file, atomic_out_dir, safe_name, write_json
from ..oserrors import describe_os_error
from ..points import PointSet


@dataclass
class ExportView:
    """What every writer needs from a points artefact (clicks in artefact order)."""

    info: DatasetInfo
    names: list[str]
    file_names: dict[str, str]
    sizes: dict[str, tuple[int, int]]
    points: PointSet
    doc: dict

    def clicks(self, name: str) -> list[tuple[int, int, int]]:
        """``[(x, y, class id), ...]`` of one image."""
        xy, cls = self.points.points(name)
        return [(int(a), int(b), int(c)) for (a, b), c in zip(xy, cls)]


def write_label_studio(view: ExportView, out: Path) -> None:
    """One task per image (``data.image`` = the image's file name relative to the dataset root),
    one annotation holding a ``keypointlabels`` result per click at the pixel centre in percent."""
    tasks = []
    for t, name in enumerate(view.names, 1):
        h, w = view.sizes[name]
        result = [{
            "id": f"{t}-{k}",
            "type": "keypointlabels",
            "from_name": "label",
            "to_name": "image",
            "original_width": w,
            "original_height": h,
            "image_rotation": 0,
            "value": {"x": 100.0 * (x + 0.5) / w, "y": 100.0 * (y + 0.5) / h, "width": 1.0,
                      "keypointlabels": [view.info.classes[c]]},
        } for k, (x, y, c) in enumerate(view.clicks(name))]
        tasks.append({"id": t, "data": {"image": view.file_names[name]},
                      "annotations": [{"id": t, "result": result, "was_cancelled": False}],
                      "predictions": []})
    write_json(out, tasks, sweep=True)


def write_cvat(view: ExportView, out: Path) -> None:
    """CVAT for images 1.1 XML, one ``<points>`` shape per click at the pixel centre, the
    dataset's classes listed as the task's labels."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = view.info.name
    ET.SubElement(task, "size").text = str(len(view.names))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for cname, rgb in zip(view.info.classes, view.info.palette):
        lab = ET.SubElement(labels, "label")
        ET.SubElement(lab, "name").text = cname
        ET.SubElement(lab, "color").text = "#{:02x}{:02x}{:02x}".format(*rgb)
        ET.SubElement(lab, "type").text = "points"
        ET.SubElement(lab, "attributes")
    for i, name in enumerate(view.names):
        h, w = view.sizes[name]
        im = ET.SubElement(root, "image", id=str(i), name=view.file_names[name], width=str(w), height=str(h))
        for x, y, c in view.clicks(name):
            ET.SubElement(im, "points", label=view.info.classes[c], source="manual", occluded="0",
                          points=f"{x + 0.5:.2f},{y + 0.5:.2f}", z_order="0")
    ET.indent(root)
    with atomic_file(out, sweep=True) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)


def write_coco(view: ExportView, out: Path) -> None:
    """The artefact's ``points.json`` itself: it already is PointSup COCO (provenance kept)."""
    write_json(out, view.doc, sweep=True)


def write_wtp(view: ExportView, out: Path) -> None:
    """``{name: [{"x", "y", "cls", "rank"}]}`` with ``cls`` the 0-based dataset class id and
    ``rank`` the click's 1-based position in its image; images without clicks get ``[]``."""
    doc = {name: [{"x": x, "y": y, "cls": c, "rank": k + 1} for k, (x, y, c) in enumerate(view.clicks(name))]
           for name in view.names}
    write_json(out, doc, sweep=True)


def write_text(view: ExportView, out: Path) -> None:
    """``name cls,y,x ...`` per image (0-based class ids), in artefact order.

    The reader splits a line at whitespace and skips lines starting with ``#``, so a name with
    whitespace or a leading ``#`` would come back as another image or as a comment, its clicks
    silently lost: such names are refused (another format keeps them), nothing is written."""
    bad = [name for name in view.names if not name or any(c.isspace() for c in name) or name.startswith("#")]
    if bad:
        shown = ", ".join(repr(n) for n in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DataError(view.points.path, f"{len(bad)} image name(s) cannot be written in the text format (it "
                                          f"splits at spaces and skips lines starting with '#'): {shown}; "
                                          "export as coco, wtp or sparse-png instead")
    lines = [" ".join([name] + [f"{c},{y},{x}" for x, y, c in view.clicks(name)]) for name in view.names]
    with atomic_file(out, sweep=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_sparse_png(view: ExportView, out: Path) -> None:
    """A folder of ``<name>.png`` palette PNGs: the class at each click, 255 elsewhere."""
    palette = np.asarray(view.info.palette, np.uint8)
    names = [safe_name(name, view.points.path) for name in view.names]  # names come from a file: untrusted
    with atomic_out_dir(out, "export-points") as tmp:
        for name in names:
            try:
                write_label_png(tmp / f"{name}.png", view.points.label_map(name), palette=palette)
            except OSError as exc:  # a name the file system refuses (too long, ...): say which image
                shown = name if len(name) <= 48 else f"{name[:40]}...{name[-5:]}"
                raise DataError(view.points.path, f"image {shown!r} ({len(name.encode())} bytes): cannot write "
                                                  f"{shown}.png: {describe_os_error(exc)}; rename the image") from None
