"""Application library: the database service, migrations and test isolation."""
