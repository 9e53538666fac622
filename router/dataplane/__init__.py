"""The data plane: the listener, upstream connections and the per-request forwarding decisions."""
