"""The ORM layer: cached querysets and automatic invalidation. Needs Django settings."""
