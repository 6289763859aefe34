"""Cache backends. Import them from :mod:`relaycache`."""
