"""Models the ORM tests cache (filled in by the ORM layer's tests)."""
