"""The report: the paper's Tables 3–6 and Figures 3–6 from cached train and evaluate artefacts.

Four steps, one module each:

* :mod:`~pointparse.report.runs` reads runs (:class:`RunData`, :func:`load_runs`,
  :func:`discover_runs`);
* :mod:`~pointparse.report.tables` builds the tables (pandas DataFrames, fractions in [0, 1]);
* :mod:`~pointparse.report.figures` draws the figures (:mod:`~pointparse.report.plots`,
  :mod:`~pointparse.report.qualitative`, :mod:`~pointparse.report.extension_plot`);
* :mod:`~pointparse.report.index` writes ``index.md`` and a self-contained ``index.html``;

and :mod:`~pointparse.report.write` puts them into one folder (:func:`write_report`,
:func:`build_report`). The cached ``report`` stage is :class:`pointparse.stages.report.Report`
(:func:`pointparse.stages.report.run_report`).

Importing this package does not load torch: only the qualitative grid (which runs the
checkpoints) and a run given as a bare checkpoint file need it.
"""

from .runs import RunData, check_same_classes, default_run_name, discover_runs, load_run, load_runs
from .tables import (BASELINE_RUN, EXTENSION_COLUMNS, EXTENSION_TABLE, annotation_per_image, hyperparameter_table,
                     per_class_table, read_extension_table, resolve_extension, seed_table, summary_table)
from .write import ReportConfig, build_report, format_summary, write_report

__all__ = ["BASELINE_RUN", "EXTENSION_COLUMNS", "EXTENSION_TABLE", "ReportConfig", "RunData", "annotation_per_image",
           "build_report", "check_same_classes", "default_run_name", "discover_runs", "format_summary",
           "hyperparameter_table", "load_run", "load_runs", "per_class_table", "read_extension_table",
           "resolve_extension", "seed_table", "summary_table", "write_report"]
