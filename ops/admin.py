"""The admin key: what Triton asks for before its model-repository, config, shared-memory,
logging, trace and statistics APIs answer (``gsv-triton serve`` always restricts them).

Without the restriction any client of Triton's HTTP/gRPC port can ``load`` a model with a
``file:1/model.py`` override and run Python inside the stub. Inference, metadata and health
stay open.

Where a command finds the key, first hit wins: ``--admin-key``, ``$GSV_ADMIN_KEY``, the file
``REPO/.gsv/admin-key`` (written by ``serve`` with mode 0600 when no key was given, so every
command run by someone who can write the repository can also load into it, and nobody else).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

HEADER = "gsv-admin-key"  # gRPC metadata keys must be lower case
# Triton's gRPC server looks for the restricted-protocol header under this prefix (2.51:
# "This protocol is restricted, expecting header 'triton-grpc-protocol-gsv-admin-key'").
GRPC_HEADER = "triton-grpc-protocol-" + HEADER
ENV = "GSV_ADMIN_KEY"
RESTRICTED = ("model-repository", "model-config", "shared-memory", "logging", "trace", "statistics")
_ALPHABET = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~")


class AdminKeyError(ValueError):
    """No usable admin key: none given, or one Triton's option syntax cannot carry."""


def key_file(repo: Path) -> Path:
    return Path(repo) / ".gsv" / "admin-key"


def check(key: str) -> str:
    """A key is 16-256 URL-safe characters (it travels in tritonserver's argv as ``:header=key``)."""
    if not isinstance(key, str) or not 16 <= len(key) <= 256 or not set(key) <= _ALPHABET:
        raise AdminKeyError("the admin key must be 16-256 characters of A-Z a-z 0-9 - _ . ~")
    return key


def read(repo: Path | None, explicit: str | None = None) -> str | None:
    """The key a client command sends, or None when there is none anywhere."""
    if explicit:
        return check(explicit)
    if os.environ.get(ENV):
        return check(os.environ[ENV])
    if repo is not None:
        try:
            return check(key_file(repo).read_text(encoding="ascii").strip())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise AdminKeyError(f"cannot read the admin key {key_file(repo)}: {exc}") from None
    return None


def ensure(repo: Path, explicit: str | None = None) -> str:
    """The server's key: given, from the environment, from the repository, or a new random one
    written to ``REPO/.gsv/admin-key`` (mode 0600, created exclusively so concurrent starts agree)."""
    found = read(repo, explicit)
    if found:
        return found
    path = key_file(repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return read(repo)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key + "\n")
    return key


def headers(key: str | None) -> dict[str, str] | None:
    """Request headers (HTTP) and metadata (gRPC) that carry the key: both names, so one dict
    serves either protocol (each server ignores the other's)."""
    return {HEADER: key, GRPC_HEADER: key} if key else None


def is_refusal(message: str) -> bool:
    """Whether Triton's error says a restricted API was called without the right key (gRPC
    answers it with UNAVAILABLE, which must not be mistaken for a server that is down)."""
    return "is restricted" in str(message) or "restricted" in str(message).lower() and "header" in str(message).lower()


def triton_args(key: str) -> list[str]:
    """tritonserver options that put the admin APIs behind the key on HTTP and gRPC."""
    apis = ",".join(RESTRICTED)
    check(key)
    return [f"--http-restricted-api={apis}:{HEADER}={key}", f"--grpc-restricted-protocol={apis}:{HEADER}={key}"]
