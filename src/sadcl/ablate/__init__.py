"""``sadcl ablate``: the equal-budget comparison for any dataset and config (does SADCL help on my data?).

Per seed: stage 1 once, then stage-2 rows from it (the same-budget baseline, SADCL, +SSCL, +PSCL, your own), and
single-stage rows at the same total budget (the plain head, Query2Label straight through); selection on val only,
test once; paired differences with 95 % intervals; one verdict line. :mod:`~sadcl.ablate.rows` says what a row is,
:mod:`~sadcl.ablate.runner` trains, :mod:`~sadcl.ablate.report` reads the runs back and writes the report.
"""

from sadcl.ablate.report import GUARDED, collect, verdict, write_report
from sadcl.ablate.rows import BUILTIN_ROWS, DEFAULT_ROWS, STAGE1, Row, custom_row, resolve_rows
from sadcl.ablate.runner import AblationPlan, estimate_seconds, run_ablation
from sadcl.ablate.stats import mean_std, paired_stats

__all__ = [
    "BUILTIN_ROWS",
    "DEFAULT_ROWS",
    "GUARDED",
    "STAGE1",
    "AblationPlan",
    "Row",
    "collect",
    "custom_row",
    "estimate_seconds",
    "mean_std",
    "paired_stats",
    "resolve_rows",
    "run_ablation",
    "verdict",
    "write_report",
]
