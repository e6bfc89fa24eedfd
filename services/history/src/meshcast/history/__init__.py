"""The history service: JetStream streams per namespace, history and recovery queries."""
