"""Tuning schedules: the search space, the structured model, strategies, and the ask/tell loop."""
