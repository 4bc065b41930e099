"""``sadcl report``: an offline evaluation report of a checkpoint (or two, compared).

Modules: ``collect`` (score a split as ``sadcl evaluate`` does), ``calibration`` (ECE, reliability, temperature
scaling), ``curves`` (PR curves), ``cooccurrence`` (co-occurrence errors), ``compare`` (ΔAP, paired bootstrap),
``analysis`` (the numbers of one model), ``examples`` (error thumbnails with attention), ``svg`` and ``html`` (the
page), ``build`` (assemble and write ``index.html``, ``report.json``, ``per_class.csv``).
"""

from sadcl.report.build import build_report_data, write_report

__all__ = ["build_report_data", "write_report"]
