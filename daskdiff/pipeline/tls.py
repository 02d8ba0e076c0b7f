"""Pipeline layer: TLS between daskdiff and its Dask scheduler and workers (``cluster.security``).

- :func:`security_from` turns a spec's ``cluster.security`` section into distributed's
  ``Security``, encryption required; the clusters daskdiff starts (local, local_cuda, slurm)
  then listen on ``tls://`` with the scheduler and worker certificates it names.
- :func:`check_certificates` refuses, in one line and before any cluster starts, a certificate
  that the CA (``tls_ca_file``) does not accept, by a TLS handshake in memory.
- :func:`plain_tcp_warning` words the warning for a scheduler reached over plain TCP beyond this
  machine: a Dask scheduler runs any code a client sends it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from typing import Any

from distributed.comm import get_address_host, parse_address
from distributed.security import Security

from ..errors import InputError

_ROLES = ("client", "scheduler", "worker")


def security_from(section: Any) -> Security | None:
    """The ``Security`` of a ``cluster.security`` section (None without one), encryption required.

    Every file must exist. The scheduler and worker certificates default to the client's (see
    :class:`~daskdiff.pipeline.spec.SecuritySection`); they serve the clusters daskdiff starts.
    """
    if section is None:
        return None
    keys = ["tls_ca_file"] + [k for role in _ROLES for k, _ in section.role_files(role)]
    for key in dict.fromkeys(keys):
        path = getattr(section, key)
        if not os.path.isfile(path):
            raise InputError(f"cluster.security.{key}: file {path!r} does not exist")
    files = {}
    for role in _ROLES:
        (_, cert), (_, key) = section.role_files(role)
        files[f"tls_{role}_cert"], files[f"tls_{role}_key"] = os.path.abspath(cert), os.path.abspath(key)
    return Security(tls_ca_file=os.path.abspath(section.tls_ca_file), require_encryption=True, **files)


def _context(security: Security, role: str, section: Any, listen: bool) -> ssl.SSLContext:
    (cert_key, cert), (key_key, key) = section.role_files(role)
    try:
        args = security.get_listen_args(role) if listen else security.get_connection_args(role)
    except (ssl.SSLError, OSError) as err:
        raise InputError(
            f"cluster.security: cannot load {cert_key} {cert!r} with {key_key} {key!r} and tls_ca_file "
            f"{section.tls_ca_file!r} ({err}); give PEM files, a key that belongs to its certificate, and a PEM CA"
        ) from None
    return args["ssl_context"]


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[str, str] | None:
    """Run a TLS handshake between two contexts in memory; None, or (failing side, reason)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    sides = {"client": client.wrap_bio(c_in, c_out, server_side=False), "server": server.wrap_bio(s_in, s_out, server_side=True)}
    done = set()
    for _ in range(10):
        for name, obj in sides.items():
            if name in done:
                continue
            try:
                obj.do_handshake()
                done.add(name)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except ssl.SSLError as err:
                return name, getattr(err, "verify_message", None) or err.reason or str(err)
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if len(done) == 2:
            return None
    return "client", "the handshake did not complete"


def check_certificates(section: Any, security: Security, roles: tuple[str, ...]) -> None:
    """Fail with one line if a certificate of ``roles`` is not signed by ``tls_ca_file``.

    Each role's certificate is checked, in memory, by a TLS handshake with distributed's own
    contexts against the client's (the client's against itself), before any cluster starts.
    """
    client = _context(security, "client", section, listen=False)
    for role in roles:
        failed = _handshake(client, _context(security, role, section, listen=True))
        if failed is None:
            continue
        side, reason = failed
        judged = role if side == "client" else "client"  # the client judges the server's certificate, and back
        (cert_key, cert), _ = section.role_files(judged)
        uses = f" (used for the {judged} too, as tls_{judged}_cert is not given)" if judged != "client" and cert_key == "tls_client_cert" else ""
        raise InputError(
            f"cluster.security.{cert_key} {cert!r}{uses} is not accepted with tls_ca_file {section.tls_ca_file!r}: {reason}; "
            "give the CA that signed it, or a certificate signed by that CA"
        )


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address) resolves only to loopback addresses of this machine."""
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):  # a name that does not resolve here
        return False
    try:
        return bool(found) and all(ipaddress.ip_address(ip.split("%")[0]).is_loopback for ip in found)
    except ValueError:
        return False


def plain_tcp_warning(address: str, source: str) -> str | None:
    """The warning for a scheduler at ``address`` (named by ``source``) reached over plain TCP
    beyond this machine's loopback interface, or None (``tls://``, ``inproc://``, 127.0.0.1, ``localhost``)."""
    try:
        if parse_address(address)[0] != "tcp" or _is_loopback(get_address_host(address)):
            return None
    except ValueError:
        return None
    return (f"warning: {source} {address} is a plain tcp:// connection beyond this machine: the job's code and data cross the "
            "network unencrypted, and whoever can reach that port can run code on the workers; use TLS: start the scheduler "
            "and workers with --protocol tls and --tls-ca-file/--tls-cert/--tls-key, and give its tls:// address and "
            "cluster.security (tls_ca_file, tls_client_cert, tls_client_key) in the spec")
