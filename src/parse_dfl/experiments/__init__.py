"""Running configs: one run (run.py), grids of runs (sweep.py), and reports (report.py)."""
