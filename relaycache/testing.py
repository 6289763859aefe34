"""pytest fixtures for projects using RelayCache (a pytest plugin, loaded by entry point)."""
