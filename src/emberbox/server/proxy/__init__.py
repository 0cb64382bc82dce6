"""The sandbox proxy: one listener that forwards HTTP, streams and WebSockets into sandboxes."""
