"""A throw-away PostgreSQL cluster for tests and benchmarks, never the machine's own.

`PgCluster.create(netns, addresses)` runs initdb (as the `postgres` system user: initdb and
postgres refuse root) in a fresh directory under /tmp, writes its configuration (listening on
`addresses` only, inside network namespace `netns`; the unix socket in its own directory),
and optionally TLS: a test CA and a server certificate with the addresses as IP SANs, so that
clients can use sslmode=verify-full. `start()` and `stop()` may alternate on the same data (a
fault test stops the database for a while); `remove()` stops it and deletes everything.

Access: `postgres` over the unix socket with trust (the admin, `admin_url`); every other role
over TCP from the documentation networks with scram-sha-256 (`url_for`). The postmaster runs
under `setpriv` rather than `runuser`: setpriv execs in place, so the PID this module starts is
the postmaster's, and stopping it (SIGINT: fast shutdown) needs no process lookup.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess  # noqa: TID251 - test helper
import tempfile
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

from netns import Netns
from waiting import PATIENCE, wait_until

PORT = 5432  # each cluster listens in its own namespace: no clash with another one
ADMIN = "postgres"
DATABASE = "porttrap"
CLIENT_NETWORKS = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
Address = IPv4Address | IPv6Address


def bindir() -> Path:
    """The newest installed PostgreSQL server's binaries (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not found:
        raise RuntimeError("no PostgreSQL server: scripts/setup.sh test installs it")
    return found[-1].parent


def unavailable() -> str | None:
    """Why a test cluster cannot run here, or None."""
    if os.geteuid() != 0:
        return "a test PostgreSQL cluster needs root (initdb as postgres, network namespaces)"
    try:
        bindir()
        pwd.getpwnam(ADMIN)
    except (RuntimeError, KeyError):
        return "PostgreSQL is not installed: scripts/setup.sh test installs it (Debian)"
    return None


def _as_postgres(argv: Sequence[str]) -> list[str]:
    return ["setpriv", f"--reuid={ADMIN}", f"--regid={ADMIN}", "--clear-groups", "--", *argv]


def _run(argv: Sequence[str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=cwd)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


class CertAuthority:
    """A self-signed certificate authority for one test (openssl CLI), and certificates it
    signs for IP addresses."""

    def __init__(self, directory: Path, name: str = "porttrap test CA") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.cert = directory / "ca.crt"
        self.key = directory / "ca.key"
        _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
              "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"])  # fmt: skip

    def issue(self, stem: str, addresses: Sequence[Address]) -> tuple[Path, Path]:
        """A server certificate and key for `addresses` (the IP SANs); (cert, key)."""
        key, request, cert = (self.directory / f"{stem}.{ext}" for ext in ("key", "csr", "crt"))
        extensions = self.directory / f"{stem}.ext"
        sans = ",".join(f"IP:{address}" for address in addresses)
        extensions.write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
        _run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-nodes", "-keyout", str(key), "-out", str(request),
              "-subj", f"/CN={addresses[0]}"])  # fmt: skip
        _run(["openssl", "x509", "-req", "-in", str(request), "-CA", str(self.cert),
              "-CAkey", str(self.key), "-CAcreateserial", "-out", str(cert), "-days", "2",
              "-extfile", str(extensions)])  # fmt: skip
        return cert, key


class PgCluster:
    """One PostgreSQL cluster in a temporary directory, run inside a network namespace."""

    def __init__(self, netns: Netns, addresses: Sequence[Address], base: Path) -> None:
        self.netns = netns
        self.addresses = list(addresses)
        self.base = base
        self.data = base / "data"
        self.socket_dir = base / "sock"
        self.log = base / "postgres.log"
        self.ca: CertAuthority | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, netns: Netns, addresses: Sequence[Address], tls: bool = True) -> PgCluster:
        """initdb and configure (not started); on failure nothing is left behind."""
        base = Path(tempfile.mkdtemp(prefix="porttrap-pg-"))
        cluster = cls(netns, addresses, base)
        try:
            cluster._init(tls)
        except BaseException:
            cluster.remove()
            raise
        return cluster

    def _init(self, tls: bool) -> None:
        owner = pwd.getpwnam(ADMIN)
        self.socket_dir.mkdir()
        for path in (self.base, self.socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        _run(_as_postgres([str(bindir() / "initdb"), "-D", str(self.data), "-U", ADMIN,
                           "--auth-local=trust", "--auth-host=reject", "-E", "UTF8",
                           "--locale=C", "--no-sync"]), cwd=self.base)  # fmt: skip
        settings = {
            "listen_addresses": ",".join(str(address) for address in self.addresses),
            "port": str(PORT),
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",  # throw-away data: durability against power loss is not tested
            "password_encryption": "scram-sha-256",
        }
        if tls:
            settings |= self._tls(owner)
        conf = "".join(f"{key} = '{value}'\n" for key, value in settings.items())
        with (self.data / "postgresql.conf").open("a") as file:
            file.write(conf)
        hba = ["local all postgres trust"]
        hba += [f"host all all {network} scram-sha-256" for network in CLIENT_NETWORKS]
        (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n")

    def _tls(self, owner: pwd.struct_passwd) -> dict[str, str]:
        self.ca = CertAuthority(self.base / "tls")
        cert, key = self.ca.issue("server", self.addresses)
        for path in (cert, key):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        key.chmod(0o600)
        return {"ssl": "on", "ssl_cert_file": str(cert), "ssl_key_file": str(key)}

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the postmaster in the namespace and wait until it accepts connections."""
        assert not self.running, "the cluster runs already"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns.name,
                 *_as_postgres([str(bindir() / "postgres"), "-D", str(self.data)])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.base,
            )  # fmt: skip
        wait_until(self._accepts, PATIENCE, f"PostgreSQL accepting connections ({self.log})")

    def _accepts(self) -> bool:
        if not self.running:
            raise RuntimeError(f"postgres exited; its log:\n{self.log_text()}")
        try:
            psycopg.connect(self.admin_url("postgres"), connect_timeout=5).close()
        except psycopg.OperationalError:
            return False
        return True

    def stop(self) -> None:
        """Fast shutdown (SIGINT: sessions ended, data kept), waiting for the postmaster."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            process.kill()  # immediate stop: its backends exit when they see it gone
            process.wait(timeout=PATIENCE)

    def remove(self) -> None:
        """Stop it and delete its directory (data, socket, certificates, log)."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def admin_url(self, dbname: str = DATABASE) -> str:
        """The superuser `postgres` over the unix socket (trust)."""
        return f"postgresql:///{dbname}?host={self.socket_dir}&port={PORT}&user={ADMIN}"

    def url_for(self, user: str, address: Address | None = None, ca: Path | None = None) -> str:
        """`user` over TCP to `address` (default: the first one listened on), with
        sslmode=verify-full against `ca` (default: this cluster's CA) when TLS is on. The
        password goes separately (psycopg.connect(url, password=...)), never in the URL."""
        address = ip_address(address or self.addresses[0])
        host = f"[{address}]" if address.version == 6 else str(address)
        url = f"postgresql://{user}@{host}:{PORT}/{DATABASE}"
        if self.ca is None:
            return url + "?sslmode=disable"
        return f"{url}?sslmode=verify-full&sslrootcert={ca or self.ca.cert}"

    def dump(self, schema: str) -> str:
        """pg_dump of `schema` in the test database: its objects, grants and data (without
        the \\restrict lines, whose key is new at each run)."""
        text = _run([str(bindir() / "pg_dump"), f"--schema={schema}", self.admin_url()])
        return "".join(
            line for line in text.splitlines(keepends=True) if "restrict " not in line[:12]
        )

    def create_database(self, name: str = DATABASE) -> None:
        with psycopg.connect(self.admin_url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def admin(self) -> psycopg.Connection[TupleRow]:
        """A connection as `postgres` to the test database, in autocommit."""
        return psycopg.connect(self.admin_url(), autocommit=True)
