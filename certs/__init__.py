"""Local certificates for the webhook: a CA and a serving certificate (see make_certs)."""
