"""HTTPS: a coordinator serving a certificate from a CA made here; agents and the CLI verify it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import A100
from tests.harness import MLOC, Agent, Coordinator, base_env, wait_for


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_server_cert(ca_key, ca: x509.Certificate, out: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("mloc-coordinator")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = out / "server.pem", out / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def write_pem(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_agents_and_cli_verify_the_coordinators_certificate(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_key, ca = make_ca("MLOC test CA")
    ca_pem = write_pem(ca, pki / "ca.pem")
    cert, key = make_server_cert(ca_key, ca, pki)
    _, other_ca = make_ca("Some other CA")
    other_pem = write_pem(other_ca, pki / "other-ca.pem")

    coord = Coordinator(tmp_path / "run", scheme="https",
                        extra_env={"MLOC_TLS_CERT": str(cert), "MLOC_TLS_KEY": str(key)}).start()
    started: list[Agent] = []
    try:
        assert coord.url.startswith("https://")
        trusted = Agent(coord, "trusted", gpus=[A100], extra_env={"MLOC_CA_BUNDLE": str(ca_pem)}).start()
        started.append(trusted)
        task = coord.submit({"taskType": "command", "command": "echo over tls", "resources": {"gpus": 1}})
        assert coord.wait_state(task["id"], {"succeeded", "failed"})["state"] == "succeeded"
        assert "over tls" in coord.logs(task["id"])

        # no CA bundle (the default trust store) and the wrong CA: both refuse the coordinator
        for name, env in (("untrusting", {}), ("wrong-ca", {"MLOC_CA_BUNDLE": str(other_pem)})):
            agent = Agent(coord, name, gpus=[A100], extra_env=env).start(wait=False)
            started.append(agent)
            wait_for(lambda a=agent: "CERTIFICATE_VERIFY_FAILED" in a.proc.output(), 30,
                     f"agent {name} to refuse the certificate")
        names = {w["name"] for w in coord.workers()}
        assert names == {"trusted"}  # the refusing agents never registered

        def mloc(**env: str) -> subprocess.CompletedProcess[str]:
            e = base_env(MLOC_COORDINATOR_URL=coord.url, MLOC_TOKEN=coord.admin_token, **env)
            return subprocess.run([*MLOC, "tasks"], env=e, capture_output=True, text=True, timeout=60)

        assert mloc(MLOC_CA_BUNDLE=str(ca_pem)).returncode == 0
        refused = mloc()
        assert refused.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr + refused.stdout
    finally:
        for agent in started:
            agent.stop(10)
        coord.stop()
