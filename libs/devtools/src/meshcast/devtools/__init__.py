"""Developer commands behind `make run` and `make token`."""
