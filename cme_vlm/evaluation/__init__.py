"""Evaluation: generation on the test split, metrics, judges, clinical checks, report, expert sheet."""
