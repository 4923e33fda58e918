import ipaddress
import stat

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from k8sgpu.cli.dev import pki


def test_issued_certificate_chains_to_its_ca_with_sans_and_private_key(tmp_path):
    ca = pki.make_ca(tmp_path, "ca", "test-ca")
    pair = pki.issue(ca, tmp_path, "srv", "kube-apiserver", ("system:masters",), server=True, client=True,
                     ips=("127.0.0.1",), dns=("localhost",))
    cert, _ = pair.load()
    ca_cert, _ = ca.load()
    ca_cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600


def test_existing_certificates_are_kept(tmp_path):
    ca = pki.make_ca(tmp_path, "ca", "test-ca")
    first = pki.issue(ca, tmp_path, "leaf", "a", client=True).cert.read_bytes()
    again = pki.issue(ca, tmp_path, "leaf", "a", client=True).cert.read_bytes()
    assert first == again
    assert pki.make_ca(tmp_path, "ca", "test-ca").cert.read_bytes() == ca.cert.read_bytes()
