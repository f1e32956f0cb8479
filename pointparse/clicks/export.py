"""Export: the clicks of any points artefact (simulated or human) written in a click format."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..io import check_out_dir, check_out_path, read_json
from ..points import load_points
from .formats import get_format
from .writers import ExportView


def export_view(points_dir: str | Path) -> ExportView:
    """Load a points artefact (folder or ``points.json``) for the writers."""
    ps = load_points(points_dir)
    doc = read_json(ps.path)
    file_names = {}
    for im in doc["images"]:
        name = str(im["name"]) if "name" in im else Path(str(im["file_name"])).stem
        file_names[name] = str(im.get("file_name") or name)
    return ExportView(ps.info, list(ps.names), file_names, dict(ps.image_sizes), ps, doc)


def export_points(points_dir: str | Path, fmt: str, out_path: str | Path, cache_root: str | Path | None = None,
                  force: bool = False) -> Path:
    """Write the clicks of a points artefact in format ``fmt`` to ``out_path`` (a folder for
    ``sparse-png``, a file otherwise; written atomically). Class ids become the dataset's class
    names in the name-based formats and stay 0-based ids in ``wtp``/``text``/``sparse-png``.
    ``out_path`` may not lie in the cache ``cache_root`` (nor in any cache artefact). An existing
    file is replaced only with ``force``: ``--out notes/thesis.tex`` must not silently overwrite
    what the user wrote (a folder export only replaces an empty folder or an earlier export)."""
    spec = get_format(fmt)
    out_path = Path(out_path)
    check_out_path(out_path, "export-points", cache_root)
    if not spec.folder and out_path.is_dir():
        raise DataError(out_path, f"format {fmt!r} writes a file, but this is a folder")
    if not spec.folder and (out_path.exists() or out_path.is_symlink()) and not force:
        raise DataError(out_path, "exists; export-points does not overwrite a file (pass --force to replace it)")
    if spec.folder:
        # the folder is replaced as a whole (no stale maps), so only a new, empty or earlier export
        check_out_dir(out_path, "export-points", cache_root=cache_root)
    spec.write(export_view(points_dir), out_path)
    return out_path
