"""The collector: the only package that talks to a cluster (collect and uninstall-sidecars).

    kinds         the resource kinds it reads and writes, and ``Cluster``: the seam to a cluster
    kube          the real cluster over the kubernetes client (the only kubernetes and websocket
                  import); the client's exceptions become ``CollectError``/``AccessDenied``
    memory        a cluster in memory, for tests and trials (like httpx's MockTransport)
    history       a pod watch → pod-ips.jsonl
    snapshotting  every snapshot kind, listed in all namespaces → snapshot.json
    pulling       the exec-API pull protocol: frames → files, checksums, resume
    collecting    watch, snapshot, pull, bundle.json (kernel.bundles' writer)
    uninstalling  unlabel a namespace and roll the workloads that carry the sidecar

It writes the bundle format of ``kernel.bundles``, reads a sidecar's meta.json with
``analyser.snapshot`` and a pod's addresses and controller with ``analyser.objects`` (the rules the
analyser reads them by); nothing else of the analyser.
"""
