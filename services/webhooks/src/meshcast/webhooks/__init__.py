"""The webhook relay: lifecycle events from JetStream to an HTTP endpoint."""
