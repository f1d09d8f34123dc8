"""Answers read from a finished job: verify, status, rerender."""
