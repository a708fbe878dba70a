"""`edgecompile report`: results (JSON lines of bench, eval, matrix, peak) -> the answer to the
users' question, per device: which architecture is fastest and most accurate here, and why.

load.py reads and vets the lines; rows.py joins them into one row per device, target and
architecture; plots.py draws; html.py and write.py write index.html, summary.csv, report.md.
"""
