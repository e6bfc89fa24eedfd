"""The events service: owner of the lifecycle events stream and its announcer."""
