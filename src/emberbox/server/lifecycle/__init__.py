"""Sandbox lifecycle: the persisted state machine, the API-facing service, the end-time reaper."""
