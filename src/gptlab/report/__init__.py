"""Reports: read run folders (never a live Trainer) and write a sweep's report.md, figures and the gradient heatmap."""
