"""NATS over TLS with a private CA (the operator's usual setup): a real nats-server with a
certificate signed by a CA made here, a `tls://` URL and $CODESWITCH_NATS_CA. Without the CA
the connection is refused (the certificate is not trusted), with it the streams are created."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

from runtime.natsd import find_nats_server
from runtime.process import free_port

CLI = [sys.executable, "-m", "codeswitch"]


def _certs(tmp: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("codeswitch test CA"))
          .issuer_name(name("codeswitch test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"),
                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (tmp / "ca.pem", tmp / "server.pem", tmp / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    ca, cert, key = _certs(tmp_path)
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(f'host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: "{tmp_path}/js" }}\n'
                    f'tls {{ cert_file: "{cert}"\n key_file: "{key}" }}\n')
    server = subprocess.Popen([find_nats_server(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        import os
        import time

        env = {k: v for k, v in os.environ.items() if not k.startswith("CODESWITCH_")}
        url = f"tls://127.0.0.1:{port}"
        argv = [*CLI, "nats", "init", "--nats-url", url, "--home", str(tmp_path / "home")]
        deadline = time.monotonic() + 20
        while True:  # untrusted certificate: a clear refusal, no traceback
            r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
            if "cannot reach NATS" in r.stderr or time.monotonic() > deadline:
                break
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                           env={**env, "CODESWITCH_NATS_CA": str(ca)})
        assert r.returncode == 0, r.stdout + r.stderr
        assert "streams and buckets ready on tls://127.0.0.1" in r.stdout
    finally:
        server.terminate()
        server.wait(10)
