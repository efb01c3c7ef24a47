"""A local Functions host for machines without Core Tools (dev and test only): Azurite and queue triggers."""
