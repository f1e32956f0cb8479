"""The stage kinds a pipeline file may name (``kind:``), by name."""

from __future__ import annotations

from .ablate_extension import AblateExtension
from .base import Stage
from .evaluate import Evaluate
from .extension_labels import ExtensionLabels
from .import_clicks import ImportClicks
from .make_points import MakePoints
from .pseudo_labels import PseudoLabels
from .report import Report
from .train import Train


STAGE_KINDS: dict[str, type[Stage]] = {cls.name: cls for cls in (MakePoints, ImportClicks, ExtensionLabels, Train,
                                                                  Evaluate, AblateExtension, PseudoLabels, Report)}
