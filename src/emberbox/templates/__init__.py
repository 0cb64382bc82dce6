"""Templates: content-addressed, read-only layer stacks that sandboxes boot from."""
