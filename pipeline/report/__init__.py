"""`slm report`'s parts: the validated eval rows (rows), the metrics and training summary
(summary), the heatmaps (plots), the markdown of report.md / comparison.md / orders.md
(markdown), and the number formatting the benches share (format). pipeline/stages/report.py
runs them in order."""
