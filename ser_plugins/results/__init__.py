"""Results: metrics, the run summary, plots and the cross-run report."""
