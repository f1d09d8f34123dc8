"""What farm refuses: sizes by default, each with the flag or the spec form that goes past
it, and pickle files always."""

# Items in one job: a million-image sweep is routine, 10¹² is a typo. `--max-items` raises it.
MAX_ITEMS = 10_000_000
# A spec file is read whole and every prompt is checked: long prompt lists belong in a
# catalog (CSV, Parquet or JSONL), which is streamed.
MAX_SPEC_BYTES = 4 * 1024 * 1024
# Pickle-based weights can run code when loaded: refused as LoRAs and skipped in model folders.
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl"})
# A contact sheet page's pixels (`farm report --max-pixels`): a bigger grid is paged.
SHEET_MAX_PIXELS = 16_000_000
# One prompt's characters, as written or filled from a catalog row: text encoders read a
# few hundred tokens, so a longer prompt is a mistake (or a memory attack on a shared farm).
MAX_PROMPT_CHARS = 20_000
