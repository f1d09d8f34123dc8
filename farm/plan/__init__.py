"""From a spec to items and units: the sweep, its ids, and model references. No torch,
no Ray."""
