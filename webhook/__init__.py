"""netpol-sniffer's mutating admission webhook: injects the tcpdump capture sidecar."""
