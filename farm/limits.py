"""Sizes farm refuses by default, each with the flag or the spec form that goes past it."""

# Items in one job: a million-image sweep is routine, 10¹² is a typo. `--max-items` raises it.
MAX_ITEMS = 10_000_000
# A spec file is read whole and every prompt is checked: long prompt lists belong in a
# catalog (CSV, Parquet or JSONL), which is streamed.
MAX_SPEC_BYTES = 4 * 1024 * 1024
