"""Downloads: over https only, and a download that differs from its pinned sha256 is refused
before anything is cached (served here from a file:// URL, through the real urllib)."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from pathlib import Path

import pytest

import idistill
from idistill.data import iwslt, parallel_text
from idistill.data.parallel_text import DataSourceError, download_multi30k

SOURCES = Path(idistill.__file__).parent


def test_every_download_url_in_the_library_is_https():
    plain = {
        f"{path.relative_to(SOURCES)}: {url}"
        for path in SOURCES.rglob("*.py")
        for url in re.findall(r"http://[^\s\"']+", path.read_text(encoding="utf-8"))
        if not url.startswith(("http://127.0.0.1", "http://localhost"))
    }
    assert plain == set()
    for url in (iwslt.ALL_PAIRS_URL, iwslt.DE_EN_URL, parallel_text.MULTI30K_URL):
        assert url.startswith("https://"), url


def test_pins_are_sha256_digests_or_declared_unknown():
    assert set(iwslt.SHA256) == {iwslt.ALL_PAIRS_URL, iwslt.DE_EN_URL}
    for digest in [*iwslt.SHA256.values(), *parallel_text.MULTI30K_SHA256.values()]:
        assert digest is None or re.fullmatch(r"[0-9a-f]{64}", digest), digest


def _serve_de_en(tmp_path: Path, monkeypatch) -> tuple[str, str]:
    """(file:// URL, sha256) of a small de-en.tgz holding every file the pair needs, which
    IWSLT'14 de-en now downloads from."""
    archive = tmp_path / "de-en.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in sorted(iwslt._wanted("de")[1]):
            text = b'<seg id="1"> ein Satz </seg>\n'
            member = tarfile.TarInfo(f"de-en/{name}")
            member.size = len(text)
            tar.addfile(member, io.BytesIO(text))
    monkeypatch.setattr(iwslt, "DE_EN_URL", archive.as_uri())
    return archive.as_uri(), hashlib.sha256(archive.read_bytes()).hexdigest()


def test_an_iwslt_download_that_differs_from_its_pin_is_refused_and_not_cached(
    tmp_path, monkeypatch
):
    url, real = _serve_de_en(tmp_path, monkeypatch)
    monkeypatch.setattr(iwslt, "SHA256", {url: "0" * 64})
    with pytest.raises(DataSourceError, match=f"has sha256 {real}, not the pinned {'0' * 64}"):
        iwslt._download("de", tmp_path / "data")
    assert not list((tmp_path / "data").rglob("de-en.tgz"))


def test_an_iwslt_download_that_matches_its_pin_lands(tmp_path, monkeypatch):
    url, real = _serve_de_en(tmp_path, monkeypatch)
    monkeypatch.setattr(iwslt, "SHA256", {url: real})
    archive, digest = iwslt._download("de", tmp_path / "data")
    assert digest == real and archive.read_bytes() == (tmp_path / "de-en.tgz").read_bytes()


def test_a_multi30k_file_that_differs_from_its_pin_is_refused_and_not_kept(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    (served / "train.de.gz").write_bytes(gzip.compress(b"nicht die Datei\n"))
    monkeypatch.setattr(parallel_text, "MULTI30K_URL", served.as_uri() + "/{name}.gz")
    with pytest.raises(DataSourceError, match="train.de.gz did not match its pinned sha256"):
        download_multi30k(tmp_path / "dl", "de", "en", {"train": "train"})
    assert list((tmp_path / "dl").iterdir()) == []
