"""The delivery engine: group commit, dispatch to consumers, lease expiry and scheduling."""
