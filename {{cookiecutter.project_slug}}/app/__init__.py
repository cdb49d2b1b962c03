"""The example application: an HTTP API over users, products with stock, and orders."""
