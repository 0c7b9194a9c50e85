"""The training report in output/data/: what the loop records, the kept model's validation
counts, the PNGs and the self-contained HTML page."""
