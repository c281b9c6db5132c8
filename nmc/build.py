"""`--build DIR`: the user's own app folder made into the replicas' image.

A folder with a Dockerfile is built as it is. A Node.js app folder without one (a package.json)
is built on the project's Node.js base image with a Dockerfile made here: the app copied to
/app, its production dependencies installed when it declares some and has no node_modules, and
`npm start` as the command. Either way the build's output is logged line by line, and
--build-arg KEY=VALUE reaches the build: a Dockerfile's ARGs, or the generated Dockerfile's
`npm install` (as npm_config_* settings, or a proxy). An `npm install` that cannot reach its
registry is said in one line, with what to do.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path

from nmc.containers import BuildFailed, Engine, ImageMissing
from nmc.errors import UsageError

log = logging.getLogger(__name__)

# The project's Node.js bases, in order of preference: the official image when this engine has
# it, else the one `make nodejs` makes from this machine's Node.js (nodejs/make-base-image.sh).
NODE_BASES = ("node:20-slim", "nmc-node-base:20")

GENERATED_DOCKERFILE = """\
# made by nmc-server --build for a Node.js app folder without a Dockerfile
FROM {base}
WORKDIR /app
COPY . /app
{args}{install}ENV HOME=/tmp NODE_ENV=production NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false
USER 1000:1000
CMD ["npm", "start"]
"""


def build_app(engine: Engine, folder: str, tag: str, build_args: dict[str, str] | None = None
              ) -> str:
    """Build `folder` into the image `tag` (with --build-arg's `build_args`); its id."""
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"--build {folder}: no such folder")
    if (path / "Dockerfile").is_file():
        log.info("building %s from its Dockerfile as %s", folder, tag)
        return engine.build(str(path), tag, progress=_show, build_args=build_args)
    if not (path / "package.json").is_file():
        raise UsageError(f"--build {folder}: neither a Dockerfile nor a package.json in it")
    dockerfile = node_app_dockerfile(path, _node_base(engine), tuple(build_args or ()))
    with tempfile.TemporaryDirectory(prefix="nmc-build-") as scratch:
        generated = Path(scratch) / "Dockerfile"
        generated.write_text(dockerfile, encoding="utf-8")
        log.info("building %s (a Node.js app, no Dockerfile: `npm start`) as %s", folder, tag)
        try:
            return engine.build(str(path), tag, dockerfile=str(generated), progress=_show,
                                build_args=build_args)
        except BuildFailed as e:
            raise _npm_explained(e, folder) from e


# npm's words for a registry it cannot reach: no route, no name, refused, timed out, a
# certificate it does not trust (an inspecting proxy's).
NPM_ERROR_CODE = re.compile(r"^npm (?:ERR!|error) code (\S+)")
NPM_UNREACHABLE = frozenset((
    "ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "ECONNRESET", "ENETUNREACH",
    "EHOSTUNREACH", "ERR_SOCKET_TIMEOUT", "SELF_SIGNED_CERT_IN_CHAIN",
    "UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "UNABLE_TO_VERIFY_LEAF_SIGNATURE", "CERT_HAS_EXPIRED",
    "DEPTH_ZERO_SELF_SIGNED_CERT", "EPROTO"))


def _npm_explained(error: BuildFailed, folder: str) -> BuildFailed:
    """A failed `npm install` for want of its registry, said as such; else the build's error."""
    codes = [m.group(1) for line in error.output if (m := NPM_ERROR_CODE.match(line))]
    if not codes or codes[-1] not in NPM_UNREACHABLE:
        return error
    return BuildFailed(f"building {folder} failed: `npm install` in the build could not reach "
                       f"the npm registry ({codes[-1]}): install the dependencies here first "
                       f"(`npm install --omit=dev` in {folder}; its node_modules is then used as "
                       "it is), or give the build a registry or a proxy it can reach "
                       "(--build-arg NPM_CONFIG_REGISTRY=... or --build-arg HTTPS_PROXY=...)",
                       error.output)


def node_app_dockerfile(path: Path, base: str, build_args: tuple[str, ...] = ()) -> str:
    """The Dockerfile for a Node.js app folder, which declares `build_args` (names) for its
    `npm install`; UsageError when `npm start` has nothing to run."""
    try:
        package = json.loads((path / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"--build {path}: package.json cannot be read ({e})") from None
    if not isinstance(package, dict):
        raise UsageError(f"--build {path}: package.json is not a JSON object")
    scripts = package.get("scripts") if isinstance(package.get("scripts"), dict) else {}
    if "start" not in scripts and not (path / "server.js").is_file():
        raise UsageError(f"--build {path}: package.json has no \"start\" script and there is no "
                         "server.js: nmc runs the app with `npm start`")
    needs_install = bool(package.get("dependencies")) and not (path / "node_modules").is_dir()
    install = "RUN npm install --omit=dev --no-audit --no-fund\n" if needs_install else ""
    args = "".join(f"ARG {name}\n" for name in build_args)
    return GENERATED_DOCKERFILE.format(base=base, args=args, install=install)


def _node_base(engine: Engine) -> str:
    for base in NODE_BASES:
        try:
            engine.image_id(base)
            return base
        except ImageMissing:
            continue
    raise ImageMissing(f"no Node.js base image on this Docker engine ({' or '.join(NODE_BASES)}): "
                       "run `make nodejs`, which makes one, or `docker pull node:20-slim`")


def _show(line: str) -> None:
    log.info("build: %s", line)
