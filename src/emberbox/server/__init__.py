"""The Emberbox server: the node orchestrator now, the E2B-compatible control plane next."""
