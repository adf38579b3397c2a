"""The broker-facing side of updates: publish packages, set desired state, roll out canary-first, status."""
