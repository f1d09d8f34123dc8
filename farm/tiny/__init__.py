"""The embedded tiny model's identity and shipped weights; torch-free."""
