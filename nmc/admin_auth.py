"""Who may use the admin interface: a token for every change, and for reads too off loopback.

The token comes from --admin-token-file, or is made once and kept in plain text, mode 0600, in
the run directory (`<run dir>/<name>.admin-token`), where `nmc-server status | scale | rollout`
find it by --name. A request shows it as `Authorization: Bearer <token>`, or as the HttpOnly,
SameSite=Strict cookie that the dashboard gets from `/?token=<token>` (the URL printed once at
start, as Jupyter does). It is compared in constant time.
"""

from __future__ import annotations

import hmac
import os
import secrets
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

from nmc.errors import UsageError
from nmc.run_dir import run_dir

COOKIE = "nmc_admin_token"
LOOPBACK = frozenset(("127.0.0.1", "::1", "localhost"))


def token_path(name: str) -> Path:
    return run_dir() / f"{name}.admin-token"


def server_token(name: str, token_file: str) -> tuple[str, Path]:
    """The token the admin interface wants, and where it is kept: --admin-token-file's, or the
    run directory's, made now if there is none yet."""
    if token_file:
        return _read(Path(token_file)), Path(token_file)
    path = token_path(name)
    if path.exists():
        return _read(path), path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token, path


def forget_token(name: str, token_file: str) -> None:
    """The cluster is removed: so is the token nmc made for it (not one given by a file)."""
    if not token_file:
        token_path(name).unlink(missing_ok=True)


def client_token(name: str, token_file: str) -> str | None:
    """What a subcommand sends: --admin-token-file's token, or the run directory's for --name;
    None when there is none (the server then refuses changes, saying so)."""
    path = Path(token_file) if token_file else token_path(name)
    try:
        return _read(path)
    except UsageError:
        if token_file:
            raise
        return None


def _read(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise UsageError(f"admin token file {path}: {e.strerror}") from None
    if not token:
        raise UsageError(f"admin token file {path}: the file is empty")
    return token


class Guard:
    """The admin listener's rule: changes need the token; reads need it too off loopback."""

    def __init__(self, token: str, bind: str, where: Path):
        self.token = token.encode()
        self.reads_need_token = bind not in LOOPBACK
        self.where = where  # the token's file, named in a refusal

    def refusal(self) -> str:
        what = "every admin request" if self.reads_need_token else "a change"
        return (f"{what} needs the admin token (in {self.where}): send `Authorization: Bearer "
                "<token>`, or open the dashboard from the URL nmc-server printed at start")

    def refuses(self, environ: dict) -> bool:
        needed = environ["REQUEST_METHOD"] != "GET" or self.reads_need_token
        return needed and not self.shown(environ)

    def shown(self, environ: dict) -> bool:
        given = _bearer(environ) or _cookie(environ)
        return given is not None and hmac.compare_digest(given.encode(), self.token)

    def from_query(self, environ: dict) -> bool:
        """`/?token=...` with the right token (the dashboard's first visit)."""
        given = parse_qs(environ.get("QUERY_STRING", "")).get("token", [""])[0]
        return bool(given) and hmac.compare_digest(given.encode(), self.token)

    def cookie_header(self) -> tuple[str, str]:
        return ("Set-Cookie", f"{COOKIE}={self.token.decode()}; HttpOnly; SameSite=Strict; Path=/")


def _bearer(environ: dict) -> str | None:
    scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _cookie(environ: dict) -> str | None:
    jar = SimpleCookie()
    try:
        jar.load(environ.get("HTTP_COOKIE", ""))
    except Exception:  # noqa: BLE001 - a malformed cookie header is no token
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None
