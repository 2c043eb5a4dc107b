"""Test tooling for code that uses flagrail: the pytest plugin and throwaway servers."""
