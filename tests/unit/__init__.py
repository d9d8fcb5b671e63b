"""Unit tests: pure code, no sockets or processes."""
