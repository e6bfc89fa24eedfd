"""The auth service: issues tokens, publishes the JWKS, revokes tokens and users over NATS."""
