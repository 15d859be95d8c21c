"""Views of studies in text and tables, above the study store: scaling-law fits of studies' trials
(`fits`: the scaling_fits table), the accuracy-per-compute frontier across studies (`frontier`), the
report of a scaling study and its claims (`study`), and plain-text tables (`table`). The dashboards
(lab.dashboard) draw the same results in Plotly; the CLI prints these."""
