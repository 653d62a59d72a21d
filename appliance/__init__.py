"""pushy: a standalone re-implementation of Chef Push Jobs 2.1."""

__version__ = "0.2.0"
