"""The seam between the control plane and whatever runs sandboxes on the node."""
