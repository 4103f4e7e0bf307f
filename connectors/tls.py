"""Transport security for every Arrow Flight link: certificates and TLS settings.

``genofed certs ca DIR`` makes a small local certificate authority; ``genofed certs issue`` signs
server certificates (node servers, the key holder) and client certificates (for mutual TLS) with
it. ``genofed federation init`` does both for a local federation unless given ``--no-tls``.

Configuration, paths relative to the file that names them:

- ``node.toml`` and ``keyholder.toml``: ``[tls] cert``, ``key`` (the server's identity) and
  optionally ``client_ca`` (mutual TLS: callers must present a certificate signed by it);
- ``federation.toml``: ``[tls] ca`` (the root that node and key holder certificates must chain
  to) and optionally ``cert``/``key`` (the researcher's client certificate, for mutual TLS);
- ``node.toml`` ``[keyholder]``: ``ca`` (and optionally ``cert``/``key``) for the node's calls
  to the key holder.

Bearer tokens are still required on every call: TLS protects them and the partials in transit,
and authenticates the servers; it does not replace them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genofed.engine.errors import ConfigError
from genofed.engine.privatefs import private_dir, write_private

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_DAYS = 825  # the longest validity browsers and most TLS stacks still accept

SERVER_KEYS = {"cert", "key", "client_ca"}
CLIENT_KEYS = {"ca", "cert", "key"}


# -- writing certificates --------------------------------------------------------------------------
def _write(path: Path, data: bytes) -> Path:
    """Write ``data`` atomically (temporary file + rename), mode 0600 from the moment it exists,
    in a 0700 directory: private keys, and certificates too (genofed reads them as their owner;
    a CA certificate is handed to others by copying it)."""
    private_dir(path.parent)
    return write_private(path, data)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "genofed"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(directory: str | os.PathLike[str], name: str = "genofed local CA", days: int = DEFAULT_DAYS) -> tuple[Path, Path]:
    """Make a certificate authority: ``DIR/ca.key`` (EC P-256, mode 0600) and the self-signed
    ``DIR/ca.crt``, valid for ``days``. Refuses to overwrite an existing CA (every certificate
    it signed would stop verifying). Returns ``(cert, key)`` paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    d = Path(directory)
    cert_path, key_path = d / CA_CERT, d / CA_KEY
    if cert_path.exists() or key_path.exists():
        raise ConfigError(f"{d} already holds a CA ({CA_CERT}/{CA_KEY}); issue certificates with it, or choose another directory")
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    subject = _name(name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives import serialization

    _write(key_path, _key_pem(key))
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _alt_names(hosts: Iterable[str]):
    from cryptography import x509

    out: list[x509.GeneralName] = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def make_cert(
    ca_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    name: str,
    hosts: Iterable[str] = DEFAULT_HOSTS,
    client: bool = False,
    days: int = DEFAULT_DAYS,
) -> tuple[Path, Path]:
    """Issue ``OUT/NAME.crt`` and ``OUT/NAME.key`` (mode 0600), signed by the CA in ``ca_dir``.

    A server certificate (the default) names ``hosts`` as SubjectAltNames (DNS names or IP
    addresses; by default ``localhost`` and ``127.0.0.1``): clients check the host they dial
    against them. ``client=True`` issues a client certificate for mutual TLS instead (extended
    key usage clientAuth; ``hosts`` ignored). Returns ``(cert, key)`` paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca = Path(ca_dir)
    try:
        ca_cert = x509.load_pem_x509_certificate((ca / CA_CERT).read_bytes())
        ca_key = serialization.load_pem_private_key((ca / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"{ca} holds no CA ({CA_CERT} and {CA_KEY}); make one with 'genofed certs ca {ca}'") from None
    except ValueError as e:
        raise ConfigError(f"{ca}: cannot read the CA: {e}") from None
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"certificate name {name!r} must be a plain file name")
    hosts = list(hosts)
    if not client and not hosts:
        raise ConfigError("a server certificate needs at least one host name or IP address")
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
                       critical=True)
        # a server certificate may also authenticate its holder as a client: nodes dial each other
        # over mutual TLS for MPC (each party is server to some peers and client to others)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH] if client else
                                             [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
    )
    if not client:
        builder = builder.add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    out = Path(out_dir)
    key_path = _write(out / f"{name}.key", _key_pem(key))
    cert_path = _write(out / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def fingerprint(cert: str | os.PathLike[str] | bytes) -> str:
    """The SHA-256 of a certificate (DER), as 64 lowercase hex digits: what a node pins for each
    federation member (``[[federation.members]] fingerprint``). ``cert``: a PEM file or PEM bytes."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    where = "(PEM bytes)" if isinstance(cert, bytes) else str(Path(cert))
    try:
        pem = cert if isinstance(cert, bytes) else Path(cert).read_bytes()
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except FileNotFoundError:
        raise ConfigError(f"certificate {where} does not exist") from None
    except ValueError as e:
        raise ConfigError(f"cannot read the certificate {where}: {e}") from None
    return hashlib.sha256(der).hexdigest()


# -- reading TLS settings -------------------------------------------------------------------------
def check_table(table: Any, where: str, kind: str, base: Path | None = None) -> dict[str, str]:
    """Validate a ``[tls]`` table. ``kind`` is ``server`` (node/key holder: cert, key, client_ca)
    or ``client`` (federation file: ca, cert, key). Returns it with string values; with ``base``,
    relative paths are resolved against it (the directory of the file that names them)."""
    if table is None or table == {}:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [tls] must be a table")
    known = SERVER_KEYS if kind == "server" else CLIENT_KEYS
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"{where}: unknown [tls] keys {sorted(unknown)}; known: {sorted(known)}")
    if not all(isinstance(v, str) and v for v in table.values()):
        raise ConfigError(f"{where}: [tls] values must be file paths (strings)")
    if kind == "server" and not {"cert", "key"} <= set(table):
        raise ConfigError(f"{where}: [tls] needs cert and key (the server's certificate and private key)")
    if kind == "client" and "ca" not in table:
        raise ConfigError(f"{where}: [tls] needs ca (the certificate authority that signed the servers' certificates)")
    if ("cert" in table) != ("key" in table):
        raise ConfigError(f"{where}: [tls] cert and key go together")
    return {k: str(base / v) if base is not None and not Path(v).is_absolute() else str(v) for k, v in table.items()}


def _read(base: Path | None, value: str, what: str, where: str) -> bytes:
    p = Path(value)
    if not p.is_absolute() and base is not None:
        p = base / p
    try:
        return p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read the {what} {p}: {e.strerror or e}") from None


@dataclass(frozen=True)
class ServerTLS:
    """A server's TLS identity, read from its ``[tls]`` table."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    @classmethod
    def load(cls, table: Mapping[str, str], base: Path | None, where: str) -> ServerTLS | None:
        """None when ``table`` is empty (plain ``grpc://``)."""
        if not table:
            return None
        ca = _read(base, table["client_ca"], "client CA certificate", where) if table.get("client_ca") else None
        return cls(_read(base, table["cert"], "certificate", where), _read(base, table["key"], "private key", where), ca)

    def server_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``flight.FlightServerBase``."""
        kw: dict[str, Any] = {"tls_certificates": [(self.cert, self.key)]}
        if self.client_ca is not None:
            kw |= {"verify_client": True, "root_certificates": self.client_ca}
        return kw


@dataclass(frozen=True)
class ClientTLS:
    """What a client needs to dial TLS servers: the root to verify them, and for mutual TLS its
    own certificate and key."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None
    source: str = ""  # the file that configured it, for error messages

    @classmethod
    def load(cls, table: Mapping[str, str], base: Path | None, where: str) -> ClientTLS | None:
        """None when ``table`` names no ``ca``."""
        if not table.get("ca"):
            return None
        cert = _read(base, table["cert"], "client certificate", where) if table.get("cert") else None
        key = _read(base, table["key"], "client private key", where) if table.get("key") else None
        return cls(_read(base, table["ca"], "CA certificate", where), cert, key, where)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``flight.FlightClient``."""
        kw: dict[str, Any] = {"tls_root_certs": self.ca}
        if self.cert is not None and self.key is not None:
            kw |= {"cert_chain": self.cert, "private_key": self.key}
        return kw


def tls_location(location: str) -> str:
    """``grpc://host:port`` as ``grpc+tls://host:port`` (other schemes unchanged)."""
    return "grpc+tls://" + location[len("grpc://"):] if location.startswith("grpc://") else location


def flight_client(location: str, tls: ClientTLS | None):
    """A ``flight.FlightClient`` for ``location``, with ``tls`` when the location is TLS."""
    import pyarrow.flight as flight

    if tls is not None and location.startswith("grpc+tls://"):
        return flight.FlightClient(location, **tls.client_kwargs())
    return flight.FlightClient(location)


def tls_problem(e: Exception, location: str, tls: ClientTLS | None) -> str | None:
    """What went wrong, and the remedy, when a connection to ``location`` failed because of TLS
    (gRPC reports it as a ``FlightUnavailableError`` with the handshake error in its message);
    None when ``e`` does not look like a TLS problem (say, nothing listens there)."""
    low = str(e).lower()
    secure = location.startswith("grpc+tls://")
    said = f" (gRPC: {_short(str(e))})"
    if secure and "certificate verify failed" in low:
        if tls is None:
            return ("cannot verify the server's certificate: no CA is configured. Set [tls] ca in federation.toml "
                    "(for a node calling its key holder: ca in node.toml's [keyholder]) to the ca.crt that signed it")
        return (f"the server's certificate is not signed by the configured CA{f' (from {tls.source})' if tls.source else ''}; "
                "configure the CA that issued it (ca.crt of the 'genofed certs ca' directory that signed it)")
    if secure and "not in peer certificate" in low:
        return ("the server's certificate does not name the host dialled; reissue it with "
                "'genofed certs issue --host <that name or IP>', or dial a name it lists")
    if secure and ("wrong version number" in low or "packet length too long" in low):
        return "the server does not speak TLS (a plain grpc:// server?); dial grpc:// or configure [tls] at the server"
    if secure and "socket closed" in low:  # the server ended the handshake: it wants a (valid) client certificate
        if tls is None or tls.cert is None:
            return ("the server closed the connection during the handshake: it requires a client certificate (mutual TLS). "
                    "Issue one with 'genofed certs issue --client' from the server's client CA and set cert and key next to ca")
        return ("the server rejected the client certificate (mutual TLS): it must be a client certificate "
                "('genofed certs issue --client') signed by the CA the server names as client_ca")
    if secure and ("ssl" in low or "handshake" in low):
        return f"the handshake failed; check the CA, the host names in the server's certificate and the client certificate{said}"
    if not secure and "socket closed" in low:
        return ("the server closed a plain grpc:// connection: it probably requires TLS. Dial grpc+tls:// "
                "(set tls = true and [tls] ca in federation.toml, or ca in node.toml's [keyholder])")
    return None


def _short(msg: str) -> str:
    line = msg.strip().splitlines()[0] if msg.strip() else msg
    return line[:300]
