"""`zhgpt report`: loss curves, sample evolution, report.md and a self-contained report.html, read from
run folders. Downstream of everything: nothing in the core imports it."""
