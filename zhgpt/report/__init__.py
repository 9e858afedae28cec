"""`zhgpt report`: loss curves, sample evolution, report.md and a self-contained report.html, read from
run folders. Downstream of everything: nothing in the core imports it.

``report`` is the command (ReportConfig, main, write_report, write_compare); ``runs`` reads a run folder,
``evolution`` builds the loss and sample-evolution tables (and labels stages), ``plots`` draws the PNGs,
``render`` writes Markdown and HTML, ``fonts`` finds a CJK font for matplotlib.
"""
