"""Volumes: team directories that sandboxes mount and the content API reads and writes."""
