"""Run and output folders: what unetzoo wrote, and so what it may replace."""
