"""Team secrets: stored sealed under the server key, resolved only when a sandbox's egress
rules are handed to its node."""
