"""TLS on nmc's listeners (--certfile, --keyfile, gunicorn's names): TLS 1.2 or later, ALPN
http/1.1. The certificate is read again on SIGHUP: new connections get the new one, open ones
keep theirs (a context's certificate can be loaded again; what it signed stays signed)."""

from __future__ import annotations

import ssl

from nmc.errors import UsageError


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server context with the certificate loaded; UsageError (one line) when it cannot be."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    load(context, certfile, keyfile)
    return context


def load(context: ssl.SSLContext, certfile: str, keyfile: str) -> None:
    """Load (or load again) the certificate chain and its key."""
    try:
        context.load_cert_chain(certfile, keyfile)
    except FileNotFoundError as e:
        raise UsageError(f"--certfile/--keyfile: no such file: {e.filename}") from None
    except PermissionError as e:
        raise UsageError(f"--certfile/--keyfile: cannot read {e.filename}: permission denied") from None
    except ssl.SSLError as e:
        reason = e.reason or str(e)
        if "KEY_VALUES_MISMATCH" in reason.upper():
            reason = "the key does not match the certificate"
        elif "PEM" in reason.upper() or "NO_START_LINE" in reason.upper():
            reason = "not a PEM certificate and key"
        raise UsageError(f"--certfile {certfile} / --keyfile {keyfile}: {reason}") from None
