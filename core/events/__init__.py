"""Events and the cluster-state model (issue 8; placeholder until it lands)."""
