"""The search for per-group rates: configuration, budget, run store, strategies, the loop, stages, executors."""
