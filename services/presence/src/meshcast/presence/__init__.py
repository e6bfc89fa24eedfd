"""The presence service: who is in which channel, from every gateway, surviving restarts."""
