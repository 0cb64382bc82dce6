"""The control plane: the E2B-compatible REST API, the sandbox proxy, auth, limits and the
lifecycle (the database owns sandbox state and end times); it reaches sandboxes only through a
node client (``emberbox.node.client``)."""
