"""CURVE keys: who may talk to the coordinator when it listens beyond this machine.

The coordinator has one key pair.  Workers and clients each have their own pairs;
the coordinator admits a connection only if its public key is in the folder of
allowed *worker* keys (worker endpoint) or allowed *client* keys (client endpoint).
The check is ZeroMQ's ZAP handshake, before any message is read, and fails closed: an
empty or missing folder admits no one.  A peer's identity is its key, whatever its
messages claim: a worker whose key is ``NAME.key`` may register only as worker id
``NAME`` or ``NAME-<suffix>``, and only if no longer key name owns that id (so a fleet
may share one key, and no key can pose as another's workers); :func:`worker_id_owner`
is the rule.

Keys are the files :func:`zmq.auth.create_certificates` writes: ``NAME.key`` (public,
to hand out) and ``NAME.key_secret`` (public and secret, to keep).  ``actorsched
keygen DIR NAME`` makes a pair.

The folders are read at start (a key file that cannot be read stops the start, naming
it) and again by :meth:`CurveServer.reload` (the coordinator does it on SIGHUP): a key
added is admitted from the next connection on, a key removed is refused on every new
connection.  On a reload an unreadable file or a missing folder admits no one through
it, logged, and the other keys still apply: a reload is how keys are revoked, so it
must never keep a removed key alive because of an unrelated mistake.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from actorsched.errors import ConfigError


def generate(key_dir: str | Path, name: str, replace: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` under ``key_dir``; returns their paths.

    An existing pair is kept (ConfigError) unless ``replace``: a new coordinator key makes every
    worker and client holding the old public key refused, so a re-run setup script must not rotate it.
    """
    existing = [path for path in (Path(key_dir) / f"{name}.key", Path(key_dir) / f"{name}.key_secret")
                if path.exists()]
    if existing and not replace:
        raise ConfigError(f"key {name!r} exists already ({', '.join(str(path) for path in existing)}); not "
                          f"replacing it, since every peer that knows its public key would then be refused; "
                          f"pass --force to replace it anyway")
    os.makedirs(key_dir, exist_ok=True)
    public, secret = zmq.auth.create_certificates(key_dir, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def load_keypair(path: str, what: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file; ConfigError naming ``what`` otherwise."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what}: cannot read key file {path!r} ({exc}); make one with "
                          f"`actorsched keygen DIR NAME`") from None
    if not secret:
        raise ConfigError(f"{what}: {path!r} holds no secret key; pass the NAME.key_secret file, not NAME.key")
    return public, secret


def load_public(path: str, what: str) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what}: cannot read public key file {path!r} ({exc}); a public key is the "
                          f"NAME.key that `actorsched keygen DIR NAME` writes") from None
    return public


def worker_id_owner(worker_id: str, key_names: Iterable[str]) -> str | None:
    """The key name that owns ``worker_id``: the longest NAME with ``worker_id`` NAME or NAME-..., or None.

    Longest, so that key ``gpu`` cannot claim ``gpu-a100-1``, which belongs to key ``gpu-a100``.
    """
    owners = [name for name in key_names if worker_id == name or worker_id.startswith(name + "-")]
    return max(owners, key=len, default=None)


def secure_client_socket(sock: zmq.Socket[Any], server_key_file: str, key_file: str) -> None:
    """Make a DEALER a CURVE client of the coordinator (both files, or neither)."""
    if not server_key_file and not key_file:
        return
    if not server_key_file or not key_file:
        raise ConfigError("CURVE needs both the coordinator's public key file and this peer's "
                          "key_secret file; one of them is missing")
    sock.curve_serverkey = load_public(server_key_file, "server_public_key_file")
    sock.curve_publickey, sock.curve_secretkey = load_keypair(key_file, "secret_key_file")


def read_public_keys(folder: str, what: str, strict: bool = True) -> tuple[dict[str, str], list[str]]:
    """The public keys in ``folder``: ({z85 key: key name}, problems).

    ``strict`` (at start): a missing folder or an unreadable ``.key`` file is a ConfigError.
    Otherwise (a reload) each problem is reported and skips only what it concerns.
    """
    if not os.path.isdir(folder):
        problem = f"{what} {folder!r} is not a folder of public keys"
        if strict:
            raise ConfigError(problem)
        return {}, [problem + "; no key is admitted through it"]
    keys: dict[str, str] = {}
    problems: list[str] = []
    for path in sorted(Path(folder).glob("*.key")):
        try:
            keys[load_public(str(path), what).decode("ascii")] = path.stem
        except ConfigError as exc:
            if strict:
                raise
            problems.append(f"{exc}; that key is not admitted")
    return keys, problems


class CurveServer:
    """The coordinator's side: a ZAP authenticator with one allowlist per endpoint (ZAP domain)."""

    def __init__(self, context: zmq.Context[Any], secret_key_file: str, worker_keys_dir: str,
                 client_keys_dir: str) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self.public, self.secret = load_keypair(secret_key_file, "[security] secret_key_file")
        self.folders = {"workers": (worker_keys_dir, "[security] worker_keys_dir"),
                        "clients": (client_keys_dir, "[security] client_keys_dir")}
        # Read before the authenticator thread starts, so that a bad file leaves nothing running.
        keys = {domain: read_public_keys(folder, what)[0] for domain, (folder, what) in self.folders.items()}
        self.worker_key_names: dict[str, str] = {}
        self.authenticator = ThreadAuthenticator(context)
        self.authenticator.start()
        self._admit(keys)

    def _admit(self, keys: dict[str, dict[str, str]]) -> None:
        """Make ``keys`` ({domain: {z85 key: name}}) the allowlists.

        The authenticator's ``certs`` map is what ``configure_curve`` fills, but that reads a
        whole folder or nothing, and keeps the old keys when the folder has gone.  ZAP
        names an admitted peer by its z85 public key (the User-Id of its messages), which
        is the text of a key file.  Each map is replaced whole, one assignment the
        authenticator's and the transport's threads see either before or after.
        """
        for domain, found in keys.items():
            self.authenticator.certs[domain] = {key.encode("ascii"): True for key in found}
        self.worker_key_names = keys["workers"]

    def reload(self) -> tuple[dict[str, int], list[str]]:
        """Read both key folders again: ({domain: keys admitted}, problems found).

        New connections are checked against the new keys at once; connections made before
        stay (ZeroMQ checks a key only in the handshake): the transport ends those of
        workers whose key is gone.
        """
        keys: dict[str, dict[str, str]] = {}
        problems: list[str] = []
        for domain, (folder, what) in self.folders.items():
            keys[domain], found = read_public_keys(folder, what, strict=False)
            problems += found
        self._admit(keys)
        return {domain: len(found_keys) for domain, found_keys in keys.items()}, problems

    def secure(self, sock: zmq.Socket[Any], domain: str) -> None:
        sock.zap_domain = domain.encode()
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret

    def stop(self) -> None:
        self.authenticator.stop()
