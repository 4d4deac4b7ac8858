"""Downloads (against a local server), zip extraction and source fetching."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest

from maskrcnn_finetune.data.download import download_file, extract_zip, fetch_source
from maskrcnn_finetune.errors import DatasetError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, more than one streamed chunk


def zip_bytes(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def fast(**kwargs):
    """Download options that keep a failing test quick."""
    return {"retries": 3, "timeout": 5, "backoff": 0.0, **kwargs}


def test_download_checks_size_and_sha256(http_server, tmp_path):
    url = http_server.serve("/data.bin", PAYLOAD)
    dest = tmp_path / "sub" / "data.bin"
    got = download_file(url, dest, expected_size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest().upper(), **fast())
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "data.bin.part").exists()
    assert http_server.count("/data.bin") == 1


def test_download_retries_after_503s(http_server, tmp_path):
    url = http_server.serve("/flaky.bin", PAYLOAD, fail_first=2)
    dest = download_file(url, tmp_path / "flaky.bin", expected_size=len(PAYLOAD), **fast())
    assert dest.read_bytes() == PAYLOAD
    assert http_server.count("/flaky.bin") == 3


def test_download_retries_after_dropped_connection(http_server, tmp_path):
    url = http_server.serve("/drop.bin", PAYLOAD, drop_first=1)
    dest = download_file(url, tmp_path / "drop.bin", **fast())
    assert dest.read_bytes() == PAYLOAD
    assert http_server.count("/drop.bin") == 2


def test_download_gives_up_after_retries(http_server, tmp_path):
    url = http_server.serve("/down.bin", PAYLOAD, fail_first=100)
    with pytest.raises(DatasetError, match="after 3 attempt") as info:
        download_file(url, tmp_path / "down.bin", **fast(retries=2))
    assert "503" in str(info.value)
    assert http_server.count("/down.bin") == 3
    assert list(tmp_path.iterdir()) == []


def test_download_404_fails_fast(http_server, tmp_path):
    url = http_server.url("/missing.zip")
    with pytest.raises(DatasetError) as info:
        download_file(url, tmp_path / "missing.zip", **fast())
    assert "404" in str(info.value) and url in str(info.value)
    assert http_server.count("/missing.zip") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "check, expected",
    [
        ({"expected_size": len(PAYLOAD) + 1}, f"expected {len(PAYLOAD) + 1} bytes, got {len(PAYLOAD)}"),
        ({"sha256": "0" * 64}, f"expected {'0' * 64}, got {hashlib.sha256(PAYLOAD).hexdigest()}"),
    ],
)
def test_download_mismatch_leaves_no_file(http_server, tmp_path, check, expected):
    url = http_server.serve("/data.bin", PAYLOAD)
    with pytest.raises(DatasetError) as info:
        download_file(url, tmp_path / "data.bin", **fast(**check))
    message = str(info.value)
    assert expected in message
    assert "corrupt" in message and "Run again" in message
    assert list(tmp_path.iterdir()) == []
    assert http_server.count("/data.bin") == 1  # a mismatch is not retried


def test_existing_correct_file_is_reused(http_server, tmp_path):
    url = http_server.serve("/data.bin", b"new content")
    dest = tmp_path / "data.bin"
    dest.write_bytes(PAYLOAD)
    got = download_file(url, dest, expected_size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest(), **fast())
    assert got.read_bytes() == PAYLOAD
    assert http_server.count() == 0


def test_existing_wrong_file_is_downloaded_again(http_server, tmp_path):
    url = http_server.serve("/data.bin", PAYLOAD)
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"truncated")
    download_file(url, dest, expected_size=len(PAYLOAD), **fast())
    assert dest.read_bytes() == PAYLOAD
    assert http_server.count("/data.bin") == 1


@pytest.mark.parametrize("url", ["ftp://example.com/a.zip", "file:///etc/passwd", "example.com/a.zip"])
def test_download_refuses_non_http_urls(tmp_path, url):
    with pytest.raises(DatasetError, match="not an http"):
        download_file(url, tmp_path / "a.zip")


def test_extract_zip_skips_macos_junk(tmp_path):
    archive = tmp_path / "good.zip"
    archive.write_bytes(zip_bytes({"data/a.txt": b"a", "data/sub/b.txt": b"b", "__MACOSX/data/._a.txt": b"junk"}))
    out = extract_zip(archive, tmp_path / "out")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["data/a.txt", "data/sub/b.txt"]
    assert (out / "data" / "sub" / "b.txt").read_bytes() == b"b"


@pytest.mark.parametrize("evil", ["../evil.txt", "data/../../evil.txt", "ABSOLUTE"])
def test_extract_zip_refuses_escaping_members(tmp_path, evil):
    outside = tmp_path / "outside" / "evil.txt"
    name = outside.as_posix() if evil == "ABSOLUTE" else evil
    archive = tmp_path / "evil.zip"
    archive.write_bytes(zip_bytes({"data/ok.txt": b"ok", name: b"pwned"}))
    out = tmp_path / "work" / "out"
    with pytest.raises(DatasetError, match="unsafe") as info:
        extract_zip(archive, out)
    assert name in str(info.value)
    assert not out.exists()  # checked before anything is written
    assert not outside.exists() and not (tmp_path / "work" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_extract_zip_refuses_symlinks(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("data/link")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    archive = tmp_path / "link.zip"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(DatasetError, match="symbolic link"):
        extract_zip(archive, tmp_path / "out")


def test_extract_zip_on_non_zip(tmp_path):
    page = tmp_path / "page.zip"
    page.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    with pytest.raises(DatasetError, match=r"page\.zip is not a zip file: it is an HTML page"):
        extract_zip(page, tmp_path / "out")
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"\x00\x01 not an archive")
    with pytest.raises(DatasetError, match=r"junk\.zip is not a zip file"):
        extract_zip(junk, tmp_path / "out")


def test_extract_zip_detects_crc_errors(tmp_path):
    data = zip_bytes({"data/a.txt": b"hello balloon"}, compression=zipfile.ZIP_STORED)
    archive = tmp_path / "bad.zip"
    archive.write_bytes(data.replace(b"hello balloon", b"hello BALLOON"))
    with pytest.raises(DatasetError, match=r"corrupt \(CRC mismatch in member 'data/a.txt'\)"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extract_zip_caps_total_size(tmp_path):
    archive = tmp_path / "big.zip"
    archive.write_bytes(zip_bytes({"zeros.bin": bytes(10_000)}))
    with pytest.raises(DatasetError, match="cap"):
        extract_zip(archive, tmp_path / "out", max_total_size=1000)


def test_fetch_source_folder_is_returned_as_is(tmp_path):
    folder = tmp_path / "labelme"
    folder.mkdir()
    assert fetch_source(str(folder), tmp_path / "work") == folder
    assert not (tmp_path / "work").exists()


def test_fetch_source_zip_path_unwraps_single_folder(tmp_path):
    archive = tmp_path / "mydata.zip"
    archive.write_bytes(zip_bytes({"mydata/a.json": b"{}", "mydata/a.jpg": b"x", "__MACOSX/mydata/._a.jpg": b"j"}))
    folder = fetch_source(archive, tmp_path / "work")
    assert folder == tmp_path / "work" / "mydata" / "mydata"
    assert sorted(p.name for p in folder.iterdir()) == ["a.jpg", "a.json"]


def test_fetch_source_zip_path_with_several_top_entries(tmp_path):
    archive = tmp_path / "flat.zip"
    archive.write_bytes(zip_bytes({"a.json": b"{}", "a.jpg": b"x"}))
    assert fetch_source(archive, tmp_path / "work") == tmp_path / "work" / "flat"


def test_fetch_source_url(http_server, tmp_path):
    url = http_server.serve("/files/dataset.zip", zip_bytes({"dataset/train/a.json": b"{}", "dataset/val/b.json": b"{}"}))
    folder = fetch_source(url, tmp_path / "work")
    assert folder.name == "dataset" and folder.parent.parent == tmp_path / "work"
    assert (folder / "train" / "a.json").is_file() and (folder / "val" / "b.json").is_file()
    assert fetch_source(url, tmp_path / "work") == folder  # a second call reuses the download
    assert http_server.count() == 1


@pytest.mark.parametrize("source", ["s3://bucket/data.zip", "NOT_THERE", "notes.txt"])
def test_fetch_source_rejects_other_forms(tmp_path, source):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match=r"a folder .*\.zip file.*http\(s\)://"):
        fetch_source(str(tmp_path / source) if "://" not in source else source, tmp_path / "work")
