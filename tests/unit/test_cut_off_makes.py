"""Files a process makes once and reads at every start, left half-made by a kill: the next
start makes them again instead of failing for good, or trusting an empty key."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from emberbox.host.certificates import EgressCa
from emberbox.server.builds.uploads import Uploads


def test_an_egress_ca_key_without_its_certificate_is_made_again(tmp_path: Path) -> None:
    EgressCa(tmp_path).pem()
    (tmp_path / "ca.pem").unlink()  # killed between the key's write and the certificate's
    pem = EgressCa(tmp_path).pem()
    assert x509.load_pem_x509_certificate(pem).subject.rfc4514_string().startswith("CN=")
    assert (tmp_path / "ca.pem").read_bytes() == pem


def test_an_egress_ca_that_does_not_load_is_still_an_error(tmp_path: Path) -> None:
    """Sandboxes trust it: a damaged one is the operator's to look at, never replaced."""
    EgressCa(tmp_path).pem()
    (tmp_path / "ca-key.pem").write_text("garbage")
    with pytest.raises(OSError, match="does not load"):
        EgressCa(tmp_path).pem()


def test_an_empty_upload_url_key_is_never_used(tmp_path: Path) -> None:
    """An HMAC with an empty key would let anyone forge upload URLs."""
    key_file = tmp_path / "secrets" / "upload-url.key"
    key_file.parent.mkdir()
    key_file.write_bytes(b"")  # created, and killed before it was written
    uploads = Uploads.open(tmp_path, 1 << 20)
    assert len(uploads.key) == 32 and key_file.read_bytes() == uploads.key
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert Uploads.open(tmp_path, 1 << 20).key == uploads.key  # kept across starts
