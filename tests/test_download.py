"""`sketchembed data download` against a local bucket-shaped HTTP server on 127.0.0.1.

The handler implements Range itself (stdlib SimpleHTTPRequestHandler does not), sends GCS-style
``x-goog-hash`` and can misbehave on purpose (cut, stall, ignore Range, wrong MD5), so resuming,
verification and retries are tested against the real files from ../shared/quickdraw."""

from __future__ import annotations

import base64
import hashlib
import http.server
import shutil
import socket
import threading
import urllib.parse
from pathlib import Path

import pytest

from sketchembed import STUDY_CLASSES
from sketchembed.cli import main
from sketchembed.corpus.categories import CATEGORIES
from sketchembed.corpus.download import BASE_URL, DownloadError, download, file_url, resolve_classes

CLASSES = ["apple", "The Eiffel Tower"]


class BucketHandler(http.server.BaseHTTPRequestHandler):
    """Serves server.root like the bucket; every request is logged to server.log."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def _target(self) -> Path | None:
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        p = self.server.root / rel
        return p if p.is_file() else None

    def _common(self, data: bytes) -> None:
        md5 = self.server.bad_md5 or base64.b64encode(hashlib.md5(data).digest()).decode()
        if self.server.send_md5 and (self.command == "HEAD" or self.server.md5_on_206 or "Range" not in self.headers):
            self.send_header("x-goog-hash", "crc32c=AAAAAA==")
            self.send_header("x-goog-hash", f"md5={md5}")
        self.send_header("Accept-Ranges", "bytes")

    def do_HEAD(self):
        self.server.log.append({"method": "HEAD", "path": self.path, "range": None, "sent": 0, "status": 0})
        p = self._target()
        if p is None:
            self.send_error(404)
            return
        data = p.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self._common(data)
        self.end_headers()

    def do_GET(self):
        entry = {"method": "GET", "path": self.path, "range": self.headers.get("Range"), "sent": 0, "status": 0}
        self.server.log.append(entry)
        if self.server.fail_status:
            entry["status"] = code = self.server.fail_status.pop(0)
            self.send_error(code)
            return
        p = self._target()
        if p is None:
            entry["status"] = 404
            self.send_error(404)
            return
        data = p.read_bytes()
        start = 0
        rng = entry["range"]
        if rng and not self.server.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                entry["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            entry["status"] = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            entry["status"] = 200
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self._common(data)
        self.end_headers()
        cut = self.server.cut_after.pop(0) if self.server.cut_after else None
        if cut is not None:
            body = body[:cut]
        self.wfile.write(body)
        self.wfile.flush()
        entry["sent"] = len(body)
        if cut is not None:
            if self.server.stall_after_cut:
                self.server.stall.wait(5)  # hold the socket open, silent: the client must time out
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:  # the client may have gone already
                pass


@pytest.fixture
def bucket(tmp_path_factory, shared_quickdraw, monkeypatch):
    """A bucket-shaped tree with real files, served on an ephemeral 127.0.0.1 port."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    root = tmp_path_factory.mktemp("bucket")
    for fmt in ("simplified", "raw"):
        (root / "full" / fmt).mkdir(parents=True)
        for c in CLASSES:
            shutil.copy(shared_quickdraw / fmt / f"{c}.ndjson", root / "full" / fmt / f"{c}.ndjson")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BucketHandler)
    server.daemon_threads = True
    server.root, server.log = root, []
    server.send_md5, server.md5_on_206, server.bad_md5, server.ignore_range = True, True, None, False
    server.cut_after, server.fail_status = [], []
    server.stall, server.stall_after_cut = threading.Event(), False
    server.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.stall.set()
    server.shutdown()
    server.server_close()


def _get(server):
    return [e for e in server.log if e["method"] == "GET"]


def _fetch(server, dest, classes=("apple",), fmt="simplified", **kw):
    kw.setdefault("retries", 0)
    kw.setdefault("backoff", 0.0)
    return download(list(classes), fmt, dest, url_base=server.url, progress=False, **kw)


def test_plain_download_is_byte_identical(bucket, tmp_path):
    dest = tmp_path / "out"
    paths = _fetch(bucket, dest, CLASSES, fmt="raw")
    assert paths == [dest / "apple.ndjson", dest / "The Eiffel Tower.ndjson"]
    for c, p in zip(CLASSES, paths):
        assert p.read_bytes() == (bucket.root / "full/raw" / f"{c}.ndjson").read_bytes()
    assert [e["path"] for e in _get(bucket)] == ["/full/raw/apple.ndjson", "/full/raw/The%20Eiffel%20Tower.ndjson"]
    assert all(e["range"] is None for e in _get(bucket))
    assert sorted(x.name for x in dest.iterdir()) == sorted(p.name for p in paths)  # no .part left


def test_cut_then_resume_transfers_only_the_rest(bucket, tmp_path):
    src = (bucket.root / "full/simplified/The Eiffel Tower.ndjson").read_bytes()
    half = len(src) // 2
    bucket.cut_after = [half]
    dest = tmp_path / "out"
    with pytest.raises(DownloadError, match="The Eiffel Tower"):
        _fetch(bucket, dest, ["The Eiffel Tower"])
    final, part = dest / "The Eiffel Tower.ndjson", dest / "The Eiffel Tower.ndjson.part"
    assert not final.exists()
    assert part.read_bytes() == src[:half]

    _fetch(bucket, dest, ["The Eiffel Tower"])
    second = _get(bucket)[1]
    assert second["range"] == f"bytes={half}-"
    assert second["status"] == 206 and second["sent"] == len(src) - half
    assert final.read_bytes() == src and not part.exists()


def test_retries_resume_within_one_call(bucket, tmp_path):
    src = (bucket.root / "full/simplified/apple.ndjson").read_bytes()
    bucket.cut_after = [1000, 5000]
    bucket.fail_status = [503]
    (path,) = _fetch(bucket, tmp_path, retries=1)
    assert path.read_bytes() == src
    assert [(e["status"], e["range"]) for e in _get(bucket)] == [
        (503, None), (200, None), (206, "bytes=1000-"), (206, "bytes=6000-")]


def test_stalled_connection_times_out_and_resumes(bucket, tmp_path):
    src = (bucket.root / "full/simplified/apple.ndjson").read_bytes()
    bucket.cut_after, bucket.stall_after_cut = [3000], True
    (path,) = _fetch(bucket, tmp_path, retries=3, timeout=0.5)  # slack for a loaded CI box
    assert path.read_bytes() == src
    assert _get(bucket)[1]["range"] == "bytes=3000-"


def test_md5_mismatch_deletes_part_and_leaves_no_file(bucket, tmp_path):
    bucket.bad_md5 = base64.b64encode(b"\0" * 16).decode()
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        _fetch(bucket, tmp_path, retries=3)
    assert list(tmp_path.iterdir()) == []
    assert len(_get(bucket)) == 1  # a wrong hash is reported, not retried


def test_resumed_file_without_hash_on_206_is_checked_by_head(bucket, tmp_path):
    bucket.cut_after, bucket.md5_on_206 = [2000], False
    bucket.bad_md5 = base64.b64encode(b"\1" * 16).decode()
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        _fetch(bucket, tmp_path, retries=1)
    assert [e["method"] for e in bucket.log] == ["GET", "GET", "HEAD"]
    assert list(tmp_path.iterdir()) == []


def _statuses(server, dest, **kw):
    seen, warned = [], []
    _fetch(server, dest, on_file=lambda p, st: seen.append(st), on_warning=warned.append, **kw)
    return seen, warned


def test_server_ignoring_range_restarts_from_zero(bucket, tmp_path):
    src = (bucket.root / "full/simplified/apple.ndjson").read_bytes()
    (tmp_path / "apple.ndjson.part").write_bytes(b"junk that is not the start of the file")
    bucket.ignore_range = True
    assert _statuses(bucket, tmp_path) == (["restarted"], [])  # not "resumed": nothing was kept
    assert [(e["status"], e["range"]) for e in _get(bucket)] == [(200, "bytes=38-")]  # one request
    assert (tmp_path / "apple.ndjson").read_bytes() == src


def test_resumed_part_is_said_resumed(bucket, tmp_path):
    src = (bucket.root / "full/simplified/apple.ndjson").read_bytes()
    (tmp_path / "apple.ndjson.part").write_bytes(src[:4000])
    assert _statuses(bucket, tmp_path) == (["resumed"], [])
    assert (tmp_path / "apple.ndjson").read_bytes() == src
    # a 206 without the hash: the HEAD asked before resuming gave it, no second HEAD
    bucket.md5_on_206 = False
    bucket.log.clear()
    (tmp_path / "apple.ndjson").unlink()
    (tmp_path / "apple.ndjson.part").write_bytes(src[:4000])
    assert _statuses(bucket, tmp_path) == (["resumed"], [])
    assert [(e["method"], e["range"]) for e in bucket.log] == [("HEAD", None), ("GET", "bytes=4000-")]
    (tmp_path / "apple.ndjson").unlink()
    (tmp_path / "apple.ndjson.part").write_bytes(b"X" + src[1:4000])  # the hash still checks the old bytes
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        _fetch(bucket, tmp_path)


def test_without_md5_an_earlier_part_is_not_trusted(bucket, tmp_path):
    """No MD5 from the server: a corrupt .part left by an earlier run would pass the size check, so
    its bytes are fetched again; the file is then checked by size only, and says so in one line."""
    src = (bucket.root / "full/simplified/apple.ndjson").read_bytes()
    (tmp_path / "apple.ndjson.part").write_bytes(b"\0" * 4000)  # right length, wrong bytes
    bucket.send_md5 = False
    seen, warned = _statuses(bucket, tmp_path)
    assert (tmp_path / "apple.ndjson").read_bytes() == src
    assert seen == ["restarted"] and warned == ["apple.ndjson: the server sent no MD5: checked by its size only"]
    # the hash is asked for first, so the rest of the .part is not fetched only to be thrown away
    assert [(e["method"], e["range"]) for e in bucket.log] == [("HEAD", None), ("GET", None)]
    # a fresh download without MD5: one warning line, nothing fetched twice
    bucket.log.clear()
    assert _statuses(bucket, tmp_path / "fresh") == (["downloaded"], warned)
    assert len(bucket.log) == 1
    with pytest.warns(UserWarning, match="apple.ndjson: the server sent no MD5"):  # never silent
        _fetch(bucket, tmp_path / "again")


def test_verify_rechecks_present_files_against_the_md5(bucket, tmp_path, capsys):
    src = (bucket.root / "full/simplified/apple.ndjson").read_bytes()
    final = tmp_path / "apple.ndjson"
    final.write_bytes(src[:100] + b"X" * 50 + src[150:])  # same size, corrupt
    assert _statuses(bucket, tmp_path) == (["present"], [])  # by size, as without --verify
    bucket.log.clear()
    seen, warned = _statuses(bucket, tmp_path, verify=True)
    assert seen == ["replaced"] and len(warned) == 1 and warned[0].startswith("apple.ndjson: MD5 ")
    assert final.read_bytes() == src and [e["method"] for e in bucket.log] == ["HEAD", "GET"]
    assert _statuses(bucket, tmp_path, verify=True) == (["verified"], [])
    bucket.send_md5 = False
    assert _statuses(bucket, tmp_path, verify=True) == (
        ["present"], ["apple.ndjson: the server sent no MD5: cannot verify it (its size matches)"])
    bucket.send_md5 = True
    final.write_bytes(b"Y" * len(src))
    argv = ["data", "download", "--classes", "apple", "--dest", str(tmp_path), "--url-base", bucket.url,
            "--retries", "0", "--verify"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "  replaced  " in cap.out and "1 file(s)" in cap.out and cap.err.startswith("warning: apple.ndjson: MD5")
    assert final.read_bytes() == src
    assert main(argv + ["--quiet"]) == 0
    assert capsys.readouterr().out == ""


def test_complete_part_gets_416_and_is_verified(bucket, tmp_path):
    src = (bucket.root / "full/simplified/apple.ndjson").read_bytes()
    (tmp_path / "apple.ndjson.part").write_bytes(src)
    (path,) = _fetch(bucket, tmp_path)
    assert [e["status"] for e in _get(bucket)] == [416]
    assert path.read_bytes() == src and not (tmp_path / "apple.ndjson.part").exists()


def test_oversized_part_is_discarded(bucket, tmp_path):
    src = (bucket.root / "full/simplified/apple.ndjson").read_bytes()
    (tmp_path / "apple.ndjson.part").write_bytes(src + b"extra")
    (path,) = _fetch(bucket, tmp_path)
    assert path.read_bytes() == src
    assert [(e["status"], e["range"]) for e in _get(bucket)] == [(416, f"bytes={len(src) + 5}-"), (200, None)]


def test_present_files_skipped_unless_size_differs_or_force(bucket, tmp_path):
    src = (bucket.root / "full/simplified/apple.ndjson").read_bytes()
    _fetch(bucket, tmp_path)
    bucket.log.clear()
    _fetch(bucket, tmp_path)
    assert [e["method"] for e in bucket.log] == ["HEAD"]
    _fetch(bucket, tmp_path, force=True)
    assert [e["method"] for e in bucket.log] == ["HEAD", "GET"]
    (tmp_path / "apple.ndjson").write_bytes(src[:-10])  # truncated by someone: fetched again
    (path,) = _fetch(bucket, tmp_path)
    assert path.read_bytes() == src


def test_http_404_is_a_clear_error(bucket, tmp_path):
    (bucket.root / "full/simplified/apple.ndjson").unlink()
    with pytest.raises(DownloadError, match=r"apple\.ndjson: HTTP 404"):
        _fetch(bucket, tmp_path, retries=3)
    assert len(_get(bucket)) == 1 and list(tmp_path.iterdir()) == []


def test_unknown_class_fails_before_any_request(bucket, tmp_path):
    with pytest.raises(ValueError, match="'appel'.*'apple'"):
        _fetch(bucket, tmp_path / "out", ["apple", "appel"])
    assert bucket.log == [] and not (tmp_path / "out").exists()


def test_class_spec_and_urls():
    assert resolve_classes("study") == list(STUDY_CLASSES)
    assert resolve_classes("all") == list(CATEGORIES) and len(CATEGORIES) == 345
    assert resolve_classes(" apple, The Eiffel Tower ,apple") == ["apple", "The Eiffel Tower"]
    assert file_url("The Eiffel Tower", "binary") == BASE_URL + "full/binary/The%20Eiffel%20Tower.bin"
    assert file_url("apple", "npz", "http://h/x/") == "http://h/x/sketchrnn/apple.npz"
    assert file_url("apple", "raw") == BASE_URL + "full/raw/apple.ndjson"
    with pytest.raises(ValueError, match="format 'png'"):
        file_url("apple", "png")


def test_cli(bucket, tmp_path, capsys):
    dest = tmp_path / "cli"
    argv = ["data", "download", "--classes", "apple,The Eiffel Tower", "--format", "simplified",
            "--dest", str(dest), "--url-base", bucket.url, "--retries", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "downloaded" in out and "2 file(s)" in out
    for c in CLASSES:
        assert (dest / f"{c}.ndjson").read_bytes() == (bucket.root / "full/simplified" / f"{c}.ndjson").read_bytes()
    assert main(argv + ["--quiet"]) == 0 and capsys.readouterr().out == ""

    assert main(argv[:3] + ["pear,nope"] + argv[4:]) == 2
    assert "unknown Quick, Draw! class 'nope'" in capsys.readouterr().err
    (bucket.root / "full/simplified/apple.ndjson").unlink()
    assert main(argv + ["--force"]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_npz_has_one_name_and_the_old_one_still_works(bucket, tmp_path, capsys):
    """sketch-rnn's files are format ``npz`` everywhere (prepare, download, the registry); the old
    download spelling ``sketchrnn`` is still taken, with one line saying so."""
    (bucket.root / "sketchrnn").mkdir(exist_ok=True)
    (bucket.root / "sketchrnn" / "apple.npz").write_bytes(b"PK-not-really-a-zip")
    argv = ["data", "download", "--classes", "apple", "--url-base", bucket.url, "--retries", "0", "--quiet"]
    assert main(argv + ["--format", "npz", "--dest", str(tmp_path / "a")]) == 0
    assert "note:" not in capsys.readouterr().err
    assert (tmp_path / "a" / "apple.npz").read_bytes() == b"PK-not-really-a-zip"
    assert main(argv + ["--format", "sketchrnn", "--dest", str(tmp_path / "b")]) == 0
    assert "note: --format sketchrnn is now called npz" in capsys.readouterr().err
    assert (tmp_path / "b" / "apple.npz").is_file()
    with pytest.raises(SystemExit):
        main(["data", "download", "--help"])
    assert "{simplified,raw,binary,npz}" in capsys.readouterr().out


def test_progress_bars_render(bucket, tmp_path, capsys):
    download(CLASSES, "raw", tmp_path, url_base=bucket.url, progress=True, retries=0)
    assert "2/2 files" in capsys.readouterr().err


def test_dest_that_is_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    dest = tmp_path / "afile"
    dest.write_text("mine")
    for where in (dest, dest / "sub"):  # a file, and a folder below a file
        argv = ["data", "download", "--classes", "apple", "--dest", str(where), "--url-base", "http://127.0.0.1:9/"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and str(dest) in err
    assert dest.read_text() == "mine"
