"""The kopf operator: pure builders and planners, one Kubernetes seam, thin handlers, one resync loop."""
