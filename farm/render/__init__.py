"""Rendering: the tiny model, pipeline and adapter caches. Imports torch lazily."""
