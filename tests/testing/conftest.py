"""Tests of the pytest plugin run pytest on throwaway projects (pytester)."""

pytest_plugins = ["pytester"]
