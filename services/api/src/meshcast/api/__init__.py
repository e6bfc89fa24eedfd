"""Meshcast's server API: Centrifugo's HTTP and gRPC server API over the NATS bus."""
