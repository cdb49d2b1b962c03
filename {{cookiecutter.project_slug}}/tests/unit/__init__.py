"""Unit tests: no database unless a test asks for one explicitly."""
