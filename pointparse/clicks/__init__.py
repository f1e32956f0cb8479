"""Human clicks in and out: annotation-tool formats ⇄ the points artefact.

:func:`import_clicks` reads the clicks of an annotation tool, checks every one against a dataset
split (image present, click inside it, class known) and writes the same artefact files as
make-points (``points.json`` with ``source: "human"``, ``points.csv``, ``stats.json``), so
:func:`pointparse.points.load_points` and training read it unchanged. :func:`export_points`
writes any points artefact (simulated or human) back out in one of the same formats, so clicks
can be reviewed or corrected in a tool and imported again; ``import(export(x)) == x``.

Formats (registry :data:`CLICK_FORMATS`):

=================  ==========================================================================
``label-studio``   Label Studio JSON export, ``KeyPointLabels`` results (percent coordinates)
``cvat``           CVAT for images 1.1 XML, ``<points>`` shapes (pixel coordinates)
``coco``           COCO json with ``point_coords``/``point_labels`` (detectron2 PointSup)
``wtp``            "What's the Point" (Bearman et al., ECCV 2016) click json
                   ``{image: [{"x", "y", "cls", "rank"}]}``
``text``           one line per image: ``name cls,y,x cls,y,x ...``
``sparse-png``     a folder of ``<name>.png`` label maps, the class at each click, 255 elsewhere
=================  ==========================================================================

Modules: ``readers`` (one reader per format, and the coordinate convention), ``writers`` (one
writer per format), ``formats`` (the registry), ``importer`` (class maps, image matching, the
checks and :func:`import_clicks`), ``export`` (:func:`export_points`). The cached
``import-clicks`` stage is :mod:`pointparse.stages.import_clicks`.
"""

from .export import export_points
from .formats import CLICK_FORMATS, ClickFormat, get_format
from .importer import import_clicks, load_class_map
from .readers import pixel_index

__all__ = ["CLICK_FORMATS", "ClickFormat", "export_points", "get_format", "import_clicks", "load_class_map",
           "pixel_index"]
