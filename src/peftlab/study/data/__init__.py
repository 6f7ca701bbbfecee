"""Data sources of the built-in tasks: each returns plain Python examples, read from the offline assets."""
