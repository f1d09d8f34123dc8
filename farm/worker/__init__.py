"""The render worker: one unit at a time, from its items to its images and part."""
