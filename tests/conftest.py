"""Shared pytest configuration: fixture modules loaded as plugins."""

pytest_plugins = ["tests.fixtures.real_data"]
