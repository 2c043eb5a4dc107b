"""Tests of flags.cache (a package, so module names cannot clash with other test dirs)."""
