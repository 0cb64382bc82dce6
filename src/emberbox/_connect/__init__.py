"""Connect protocol (JSON codec) pieces shared by envd's server side and our clients."""
