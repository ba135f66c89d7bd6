"""Lightning callbacks, one job each: logs (training.log, progress lines, samples, guards) and
monitors (the guide's debugging checks)."""
