"""The lab: a simulated Kubernetes cluster made of network namespaces, with real packets."""
