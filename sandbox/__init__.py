"""A local, offline stand-in for the Microsoft cloud endpoints the notifier calls (dev and test only)."""
