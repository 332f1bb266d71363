"""Shared pytest configuration: the real-apiserver fixtures are a plugin module."""

pytest_plugins = ["tests.fixtures.apiserver"]
