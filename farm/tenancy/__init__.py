"""Tenants: the tenants file, their presets, and the policy a tenant's job obeys."""
