"""Tests of seqtrain.data.download against archives built here and served locally."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from seqtrain.data import download as dl
from seqtrain.data.download import (ARCHIVE, DownloadError, UnverifiedDownloadWarning, archive_url,
                                    cache_dir, cached_datasets, dataset_dir, download)

TS = """@problemName {name}
@timeStamps false
@missing false
@univariate true
@equalLength true
@seriesLength 3
@classLabel true a b
@data
1,2,3:a
4,5,6:b
"""
LONG_SIX = ["EigenWorms", "SelfRegulationSCP1", "SelfRegulationSCP2", "EthanolConcentration",
            "Heartbeat", "MotorImagery"]


def ts(name: str = "Tiny", extra: str = "") -> str:
  return TS.format(name=name) + extra


def make_zip(path: Path, files: dict[str, str | bytes],
             links: dict[str, str] | None = None) -> Path:
  """A zip of ``files`` (regular members) and ``links`` (symlink member -> target)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
    for name, data in files.items():
      info = zipfile.ZipInfo(name)
      info.external_attr = (stat.S_IFREG | 0o644) << 16
      info.compress_type = zipfile.ZIP_DEFLATED
      zf.writestr(info, data)
    for name, target in (links or {}).items():
      info = zipfile.ZipInfo(name)
      info.create_system = 3
      info.external_attr = (stat.S_IFLNK | 0o777) << 16
      zf.writestr(info, target)
  return path


def tiny_zip(path: Path, name: str = "Tiny", extra: str = "") -> Path:
  """The archive layout: a folder with .ts files plus .arff/.txt copies."""
  return make_zip(path, {
    f"{name}/{name}_TRAIN.ts": ts(name, extra), f"{name}/{name}_TEST.ts": ts(name),
    f"{name}/{name}_TRAIN.arff": "@relation x\n", f"{name}/{name}_TEST.txt": "1 2 3\n",
  })


def sha(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def contents(root: Path) -> list[str]:
  return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


class Server:
  """A local HTTP server of the files in ``root`` that records the paths asked for."""

  def __init__(self, root: Path):
    self.root, self.hits = root, []
    hits = self.hits

    class Handler(http.server.SimpleHTTPRequestHandler):
      def do_GET(self):
        hits.append(self.path)
        super().do_GET()

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
    self.thread.start()

  def close(self) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join(5)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
  for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
              "SEQTRAIN_ARCHIVE_URL"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("SEQTRAIN_DATA_DIR", str(tmp_path / "default-cache"))


@pytest.fixture
def server(tmp_path):
  (tmp_path / "srv").mkdir()
  srv = Server(tmp_path / "srv")
  yield srv
  srv.close()


@pytest.fixture
def cache(tmp_path) -> Path:
  return tmp_path / "cache"


def test_registry():
  for name in LONG_SIX + ["BasicMotions", "JapaneseVowels", "GunPoint", "FordA"]:
    entry = ARCHIVE[name]
    assert entry.name == name
    assert entry.url == f"https://www.timeseriesclassification.com/aeon-toolkit/{name}.zip"
    assert entry.channels >= 1 and entry.length > 1 and entry.n_classes >= 2
  assert ARCHIVE["EigenWorms"].length == 17984 and ARCHIVE["MotorImagery"].channels == 64
  assert all(e.sha256 is None or len(e.sha256) == 64 for e in ARCHIVE.values())
  assert "17984" in ARCHIVE["EigenWorms"].description
  assert archive_url("X", "http://mirror/a/") == "http://mirror/a/X.zip"


def test_cache_dir_resolution(monkeypatch, tmp_path):
  monkeypatch.setenv("SEQTRAIN_DATA_DIR", str(tmp_path / "d"))
  assert cache_dir() == tmp_path / "d"
  monkeypatch.delenv("SEQTRAIN_DATA_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert cache_dir() == tmp_path / "xdg" / "seqtrain" / "datasets"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert cache_dir() == tmp_path / "home" / ".cache" / "seqtrain" / "datasets"


def test_download_extracts_flat_with_manifest(server, cache):
  archive = tiny_zip(server.root / "Tiny.zip")
  url = f"{server.url}/Tiny.zip"
  with pytest.warns(UnverifiedDownloadWarning, match="no pinned checksum"):
    folder = download("Tiny", cache_dir=cache, url=url, progress=False)
  assert folder == cache / "Tiny"
  assert contents(cache) == ["Tiny", "Tiny/.seqtrain-download.json", "Tiny/Tiny_TEST.ts",
                             "Tiny/Tiny_TRAIN.ts"]
  assert (folder / "Tiny_TRAIN.ts").read_text() == ts()
  manifest = json.loads((folder / ".seqtrain-download.json").read_text())
  assert manifest["url"] == url and manifest["sha256"] == sha(archive)
  assert manifest["size"] == archive.stat().st_size and manifest["date"]
  assert "first use" in manifest["checksum"]
  assert manifest["files"]["Tiny_TEST.ts"]["size"] == len(ts())
  assert cached_datasets(cache) == ["Tiny"] and dataset_dir("Tiny", cache) == folder
  assert dataset_dir("Other", cache) is None


def test_cached_download_does_not_touch_network(server, cache):
  tiny_zip(server.root / "Tiny.zip")
  url = f"{server.url}/Tiny.zip"
  with pytest.warns(UnverifiedDownloadWarning):
    first = download("Tiny", cache_dir=cache, url=url, progress=False)
  assert download("Tiny", cache_dir=cache, url=url, progress=False) == first
  assert server.hits == ["/Tiny.zip"]
  download("Tiny", cache_dir=cache, url=url, progress=False, force=True)  # verified: no warning
  assert len(server.hits) == 2
  (first / "Tiny_TEST.ts").unlink()  # damaged cache is fetched again
  assert dataset_dir("Tiny", cache) is None
  download("Tiny", cache_dir=cache, url=url, progress=False)
  assert len(server.hits) == 3 and dataset_dir("Tiny", cache) == first


def test_registry_name_case_insensitive_base_url_and_pin(server, cache, monkeypatch):
  archive = tiny_zip(server.root / "BasicMotions.zip", "BasicMotions")
  monkeypatch.setenv("SEQTRAIN_ARCHIVE_URL", server.url)
  folder = download("basicmotions", cache_dir=cache, sha256=sha(archive).upper(), progress=False)
  assert folder == cache / "BasicMotions" and server.hits == ["/BasicMotions.zip"]
  assert (folder / "BasicMotions_TRAIN.ts").is_file()
  assert "pinned" in json.loads((folder / ".seqtrain-download.json").read_text())["checksum"]
  assert dataset_dir("BASICMOTIONS", cache) == folder


def test_wrong_sha256_refused_and_nothing_left(server, cache):
  archive = tiny_zip(server.root / "Tiny.zip")
  with pytest.raises(DownloadError) as err:
    download("Tiny", cache_dir=cache, url=f"{server.url}/Tiny.zip", sha256="0" * 64, progress=False)
  msg = str(err.value)
  assert "Tiny" in msg and f"{server.url}/Tiny.zip" in msg
  assert "0" * 64 in msg and sha(archive) in msg
  assert contents(cache) == []


@pytest.mark.parametrize("evil", ["../evil.ts", "Tiny/../../evil.ts", "..\\evil.ts", "C:/evil.ts",
                                  "C:evil.ts", "ABSOLUTE"])
def test_unsafe_member_refused(server, cache, tmp_path, evil):
  if evil == "ABSOLUTE":
    evil = str(tmp_path / "abs" / "evil.ts")
  make_zip(server.root / "Tiny.zip", {"Tiny/Tiny_TRAIN.ts": ts(), "Tiny/Tiny_TEST.ts": ts(),
                                      evil: "pwned"})
  with pytest.raises(DownloadError, match="unsafe archive member"):
    download("Tiny", cache_dir=cache, url=f"{server.url}/Tiny.zip", progress=False)
  assert contents(cache) == []
  assert not [p for p in tmp_path.rglob("*evil*")]


def test_symlink_member_refused(server, cache):
  make_zip(server.root / "Tiny.zip", {"Tiny/Tiny_TEST.ts": ts()},
           links={"Tiny/Tiny_TRAIN.ts": "/etc/passwd"})
  with pytest.raises(DownloadError, match="link"):
    download("Tiny", cache_dir=cache, url=f"{server.url}/Tiny.zip", progress=False)
  assert contents(cache) == []


def test_truncated_zip_refused(server, cache):
  data = tiny_zip(server.root / "full.zip").read_bytes()
  (server.root / "Tiny.zip").write_bytes(data[: len(data) // 2])
  with pytest.raises(DownloadError, match="corrupt"):
    download("Tiny", cache_dir=cache, url=f"{server.url}/Tiny.zip", progress=False)
  assert contents(cache) == []


def test_html_page_and_missing_files_refused(server, cache):
  (server.root / "Tiny.zip").write_text("<!DOCTYPE html><html>Not found</html>")
  with pytest.raises(DownloadError, match="HTML"):
    download("Tiny", cache_dir=cache, url=f"{server.url}/Tiny.zip", progress=False)
  make_zip(server.root / "Tiny.zip", {"Tiny/Tiny_TRAIN.ts": ts(), "Tiny/Other_TEST.ts": ts()})
  with pytest.raises(DownloadError, match="lacks Tiny_TEST.ts"):
    download("Tiny", cache_dir=cache, url=f"{server.url}/Tiny.zip", progress=False)
  assert contents(cache) == []


def test_zip_bomb_cap(server, cache):
  tiny_zip(server.root / "Tiny.zip", extra="1,1,1:a\n" * 2000)
  with pytest.raises(DownloadError, match="zip bomb"):
    download("Tiny", cache_dir=cache, url=f"{server.url}/Tiny.zip", progress=False,
             max_extract_bytes=1000)
  assert contents(cache) == []


def test_http_404_names_url(server, cache):
  url = f"{server.url}/Missing.zip"
  with pytest.raises(DownloadError) as err:
    download("Missing", cache_dir=cache, url=url, progress=False)
  assert "404" in str(err.value) and url in str(err.value) and "Missing" in str(err.value)
  assert contents(cache) == []


def test_trust_on_first_use_refuses_changed_archive(server, cache):
  tiny_zip(server.root / "Tiny.zip")
  url = f"{server.url}/Tiny.zip"
  with pytest.warns(UnverifiedDownloadWarning):
    folder = download("Tiny", cache_dir=cache, url=url, progress=False)
  before = {p: (folder / p).read_bytes() for p in contents(folder)}
  recorded = json.loads((folder / ".seqtrain-download.json").read_text())["sha256"]
  changed = tiny_zip(server.root / "Tiny.zip", extra="7,8,9:b\n")
  with pytest.raises(DownloadError) as err:
    download("Tiny", cache_dir=cache, url=url, progress=False, force=True)
  assert recorded in str(err.value) and sha(changed) in str(err.value)
  assert "first use" in str(err.value)
  assert {p: (folder / p).read_bytes() for p in contents(folder)} == before  # old copy intact
  assert contents(cache) == sorted(["Tiny"] + [f"Tiny/{p}" for p in before])
  # An explicit checksum accepts the new archive.
  download("Tiny", cache_dir=cache, url=url, progress=False, force=True, sha256=sha(changed))
  assert (folder / "Tiny_TRAIN.ts").read_text().endswith("7,8,9:b\n")


def test_file_url_and_plain_path(tmp_path, cache):
  archive = make_zip(tmp_path / "copied" / "Tiny.zip",
                     {"Tiny_TRAIN.ts": ts(), "Tiny_TEST.ts": ts(), "__MACOSX/._Tiny_TEST.ts": "x"})
  with pytest.warns(UnverifiedDownloadWarning):
    folder = download("Tiny", cache_dir=cache, url=archive.as_uri(), progress=False)
  assert sorted(p.name for p in folder.iterdir()) == [".seqtrain-download.json", "Tiny_TEST.ts",
                                                      "Tiny_TRAIN.ts"]
  folder = download("Tiny", cache_dir=cache, url=str(archive), progress=False, force=True)
  assert dataset_dir("Tiny", cache) == folder


def make_tar(path: Path, files: dict[str, str], links: dict[str, str] | None = None) -> Path:
  with tarfile.open(path, "w:gz") as tf:
    for name, text in files.items():
      data = text.encode()
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tf.addfile(info, io.BytesIO(data))
    for name, target in (links or {}).items():
      info = tarfile.TarInfo(name)
      info.type, info.linkname = tarfile.SYMTYPE, target
      tf.addfile(info)
  return path


def test_tar_gz_and_variants(tmp_path, cache):
  """Also: file names matched case-insensitively, _eq variants kept."""
  good = make_tar(tmp_path / "Vary.tar.gz", {
    "Vary/Vary_TRAIN.ts": ts("Vary"), "Vary/vary_TEST.ts": ts("Vary"),
    "Vary/Vary_eq_TRAIN.ts": ts("Vary"), "Vary/Vary_eq_TEST.ts": ts("Vary")})
  with pytest.warns(UnverifiedDownloadWarning):
    folder = download("Vary", cache_dir=cache, url=good.as_uri(), progress=False)
  assert sorted(p.name for p in folder.glob("*.ts")) == [
    "Vary_TEST.ts", "Vary_TRAIN.ts", "Vary_eq_TEST.ts", "Vary_eq_TRAIN.ts"]
  bad = make_tar(tmp_path / "Bad.tar.gz", {"Bad_TRAIN.ts": ts(), "Bad_TEST.ts": ts()},
                 links={"link.ts": "/etc/passwd"})
  with pytest.raises(DownloadError, match="link"):
    download("Bad", cache_dir=cache, url=bad.as_uri(), progress=False)
  assert [p.name for p in cache.iterdir()] == ["Vary"]


def test_unknown_name_suggests(cache):
  with pytest.raises(ValueError, match="EigenWorms") as err:
    download("eigenworm", cache_dir=cache, progress=False)
  assert "url=" in str(err.value)
  with pytest.raises(ValueError, match="invalid dataset name"):
    download("../x", cache_dir=cache, url="file:///nonexistent.zip")
  assert contents(cache) == []


def test_default_cache_from_env(server, tmp_path, monkeypatch):
  monkeypatch.setenv("SEQTRAIN_DATA_DIR", str(tmp_path / "envcache"))
  tiny_zip(server.root / "Tiny.zip")
  with pytest.warns(UnverifiedDownloadWarning):
    folder = download("Tiny", url=f"{server.url}/Tiny.zip", progress=False)
  assert folder == tmp_path / "envcache" / "Tiny" and cached_datasets() == ["Tiny"]
  assert dataset_dir("Tiny") == folder


def test_progress_line(server, cache, capsys):
  tiny_zip(server.root / "Tiny.zip")
  with pytest.warns(UnverifiedDownloadWarning):
    download("Tiny", cache_dir=cache, url=f"{server.url}/Tiny.zip", progress=True)
  err = capsys.readouterr().err
  assert "Tiny:" in err and "(100%)" in err and "/s" in err
  assert dl._fmt_bytes(3 * 1024**2) == "3.0 MiB"
