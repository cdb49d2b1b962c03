"""Integration tests of the HTTP API: a real server, each test on its own database."""
