"""The ``netpol-sniffer`` command line: one module per subcommand, ``main`` as the error boundary.

Each subcommand module defines ``SUMMARY`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; it is imported only when that subcommand runs. Beside them: ``arguments``
(argument types), ``progress`` (the progress bar), ``caches`` (the private folder the compiled
templates are kept in between runs).
"""
