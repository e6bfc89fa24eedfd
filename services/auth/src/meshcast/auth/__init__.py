"""The auth service: built by its own issue; this package is only its place in the workspace."""
