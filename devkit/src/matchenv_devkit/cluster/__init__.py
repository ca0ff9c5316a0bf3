"""A real local Kubernetes control plane, built from the Go modules, for tests and the demo."""
