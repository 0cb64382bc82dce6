"""Code that runs inside sandboxes (standard library only): PID 1 and the port forwarder."""
