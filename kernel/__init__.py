"""The shared kernel of netpol-sniffer: what every package agrees on, and nothing else.

    errors    the one error tree (every package raises from it)
    names     the labels, annotations, container and volume names users and clusters see
    capture   the capture sidecar's modes and what each records (its BPF filter)
    times     the range of times inputs may name, their RFC 3339 text, and reading one
    bundles   the bundle format between collect, the lab and analyse: names, bundle.json, its
              one writer

Pure data and file-format code: imports nothing of the project's other packages (an
import-linter contract says so), no heavy library.
"""
