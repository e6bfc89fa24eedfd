"""The WebSocket edge gateway: Centrifugo client protocol v2 over NATS."""
