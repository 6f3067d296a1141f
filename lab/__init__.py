"""The lab: a simulated Kubernetes cluster made of network namespaces, with real packets.

Pure (data in, data out, tested without root):
    manifests   Kubernetes manifests → workloads and Services
    plans       the traffic plan (docs/lab.md)
    layouts     pods, IPs, names, ClusterIPs, DNS records, endpoints
    services    kube-proxy-like iptables rules (rendering; ``apply`` loads them)
    bundling    snapshot.json, pod-ips.jsonl, meta.json, truth.json (``write_bundle`` writes)
    checking    policies judged against truth.json with analyser.evaluation
    dns         the DNS wire codec (and the server the DNS pod runs)

Shells:
    netns       the only module that runs ``ip``: namespaces, veths, routes, clean-up
    capturing   the webhook's tcpdump argv inside a pod
    agent       the process that plays one pod (servers, DNS, clients, the kubelet's probes),
                with ``servers`` and ``traffic``
    running     orchestration: build, play, capture, write, remove everything
"""
