"""Tests of the ``seqtrain data list|download|prepare|inspect`` commands (offline)."""
from __future__ import annotations

import argparse
import hashlib
import json
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

from seqtrain.data.commands import add_data_commands, run_data

TS = """@problemName {name}
@timeStamps false
@missing true
@univariate true
@equalLength true
@seriesLength 4
@classLabel true a b
@data
1,2,3,4:a
4,?,6,7:b
0,1,0,1:a
"""
PREFIX = "seqtrain data: error: "


def parser() -> argparse.ArgumentParser:
  """The ``seqtrain`` parser as the CLI builds it, with only the data commands."""
  p = argparse.ArgumentParser(prog="seqtrain")
  add_data_commands(p.add_subparsers(dest="command", required=True))
  return p


def run(capsys, *argv: str) -> tuple[int, str, str]:
  """Runs ``seqtrain data ARGV``; returns (exit code, stdout, stderr)."""
  args = parser().parse_args(["data", *argv])
  assert args.command == "data"
  code = run_data(args)
  out, err = capsys.readouterr()
  return code, out, err


def assert_one_error(err: str, *parts: str) -> None:
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(PREFIX), err
  assert "Traceback" not in err
  for part in parts:
    assert part in lines[0], (part, lines[0])


def tiny_zip(path: Path, name: str) -> Path:
  """An archive-layout zip: ``<name>/<name>_{TRAIN,TEST}.ts`` plus an .arff copy."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
    for member, text in {f"{name}/{name}_TRAIN.ts": TS.format(name=name),
                         f"{name}/{name}_TEST.ts": TS.format(name=name),
                         f"{name}/{name}_TRAIN.arff": "@relation x\n"}.items():
      info = zipfile.ZipInfo(member)
      info.external_attr = (stat.S_IFREG | 0o644) << 16
      zf.writestr(info, text)
  return path


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
  """No network, no user cache: the default cache is an empty folder of the test."""
  for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "SEQTRAIN_ARCHIVE_URL"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("SEQTRAIN_DATA_DIR", str(tmp_path / "default-cache"))


def test_list_human_and_json(capsys):
  code, out, err = run(capsys, "list")
  assert code == 0 and err == ""
  for text in ("BasicMotions", "JapaneseVowels", "EigenWorms", "motif", "spectral",
               "motif_length=32"):
    assert text in out
  bundled = next(line for line in out.splitlines() if line.split()[:1] == ["JapaneseVowels"])
  assert bundled.split()[1:] == ["270", "370", "12", "7..29", "9"]

  code, out, _ = run(capsys, "list", "--json")
  report = json.loads(out)
  assert code == 0
  bundled = {b["name"]: b for b in report["bundled"]}
  assert bundled["BasicMotions"]["train"] == 40 and bundled["BasicMotions"]["channels"] == 6
  assert bundled["JapaneseVowels"]["length_min"] == 7
  archive = {a["name"]: a for a in report["archive"]}
  assert archive["EigenWorms"]["length"] == 17984 and not archive["EigenWorms"]["downloaded"]
  tasks = {t["name"]: t for t in report["synthetic"]}
  assert tasks["motif"]["options"]["motif_length"] == 32 and "order" in tasks


def test_download_file_url_then_list_marks_it(capsys, tmp_path):
  cache = tmp_path / "cache"
  archive = tiny_zip(tmp_path / "srv" / "GunPoint.zip", "GunPoint")
  code, out, err = run(capsys, "download", "GunPoint", "--url", archive.as_uri(),
                       "--cache-dir", str(cache), "--quiet")
  assert code == 0, err
  assert f"downloaded to {cache / 'GunPoint'}" in out
  assert hashlib.sha256(archive.read_bytes()).hexdigest() in out
  assert (cache / "GunPoint" / "GunPoint_TRAIN.ts").is_file()

  # Cached: no second download, says so.
  code, out, _ = run(capsys, "download", "gunpoint", "--cache-dir", str(cache), "--quiet")
  assert code == 0 and "already in the cache" in out

  code, out, _ = run(capsys, "list", "--cache-dir", str(cache))
  line = next(line for line in out.splitlines() if "GunPoint" in line)
  assert line.split()[:2] == ["downloaded", "GunPoint"]
  assert not any(line.split()[:1] == ["downloaded"] for line in out.splitlines()
                 if "EigenWorms" in line)
  report = json.loads(run(capsys, "list", "--cache-dir", str(cache), "--json")[1])
  archive = {a["name"]: a for a in report["archive"]}
  assert archive["GunPoint"]["downloaded"]
  assert archive["GunPoint"]["path"] == str(cache / "GunPoint")

  # The downloaded data can be inspected from the cache folder.
  code, out, _ = run(capsys, "inspect", "GunPoint", "--data-dir", str(cache), "--split", "train")
  assert code == 0 and "train: 3 series x 1 channel, length 4, 2 classes" in out
  assert "missing  1 value in 1 series" in out


def test_download_warns_unverified_and_pins(capsys, tmp_path):
  cache = tmp_path / "cache"
  archive = tiny_zip(tmp_path / "Tiny.zip", "Tiny")
  digest = hashlib.sha256(archive.read_bytes()).hexdigest()
  code, out, err = run(capsys, "download", "Tiny", "--url", str(archive), "--cache-dir",
                       str(cache))
  assert code == 0 and "trusted on first use" in out
  assert "seqtrain data: warning: Tiny:" in err and digest in err and "(100%)" in err
  code, out, err = run(capsys, "download", "Tiny", "--url", str(archive), "--cache-dir",
                       str(cache), "--sha256", digest.upper(), "--force", "--quiet")
  assert code == 0 and err == "" and "downloaded to" in out and "pinned" in out
  code, out, err = run(capsys, "download", "Tiny", "--url", str(archive), "--cache-dir",
                       str(cache), "--sha256", "0" * 64, "--force", "--quiet")
  assert code == 2
  assert_one_error(err, "checksum mismatch", digest)
  assert (cache / "Tiny" / "Tiny_TRAIN.ts").is_file()  # the old copy stays
  report = json.loads(run(capsys, "list", "--cache-dir", str(cache), "--json")[1])
  assert report["cached_other"] == [{"name": "Tiny", "path": str(cache / "Tiny")}]


def test_download_errors(capsys, tmp_path):
  cache = tmp_path / "cache"
  code, out, err = run(capsys, "download", "eigenworm", "--cache-dir", str(cache))
  assert code == 2 and out == ""
  assert_one_error(err, "eigenworm", "Did you mean EigenWorms", "--url")
  code, _, err = run(capsys, "download", "Nothing", "--cache-dir", str(cache), "--quiet",
                     "--url", (tmp_path / "missing.zip").as_uri())
  assert code == 2
  assert_one_error(err, "Nothing", "missing.zip")
  code, _, err = run(capsys, "download", "A", "B", "--url", "file:///x.zip")
  assert code == 2
  assert_one_error(err, "single NAME")
  assert not cache.exists() or not any(cache.iterdir())


def test_prepare_bundled(capsys, tmp_path):
  code, out, err = run(capsys, "prepare", "BasicMotions", "--data-dir", str(tmp_path / "tfds"),
                       "--quiet")
  assert code == 0, err
  assert "train: 40 examples" in out and "test: 40 examples" in out
  assert str(tmp_path / "tfds") in out and "6 channels, 4 classes" in out
  code, out, _ = run(capsys, "prepare", "basicmotions", "--data-dir", str(tmp_path / "tfds"))
  assert code == 0 and "already prepared" in out and "test: 40 examples" in out


def test_prepare_missing_dataset(capsys, tmp_path):
  code, out, err = run(capsys, "prepare", "EigenWorms", "--data-dir", str(tmp_path / "tfds"),
                       "--quiet")
  assert code == 2 and out == ""
  assert_one_error(err, "EigenWorms", "seqtrain data download EigenWorms", "--source-dir")


def test_inspect_bundled(capsys):
  code, out, err = run(capsys, "inspect", "BasicMotions")
  assert code == 0, err
  assert "train: 40 series x 6 channels, length 100, 4 classes" in out
  assert "test: 40 series x 6 channels" in out
  assert "Standing 10 (25%)" in out and "missing  0 values" in out

  report = json.loads(run(capsys, "inspect", "BasicMotions", "--split", "train", "--json")[1])
  train = report["splits"]["train"]
  assert list(report["splits"]) == ["train"]
  assert (train["series"], train["channels"], train["num_classes"]) == (40, 6, 4)
  assert [c["count"] for c in train["classes"]] == [10, 10, 10, 10]
  assert len(train["channel_stats"]) == 6 and train["missing"]["values"] == 0
  assert train["length"] == {"min": 100, "mean": 100.0, "max": 100, "equal": True}

  report = json.loads(run(capsys, "inspect", "JapaneseVowels", "--json")[1])
  assert report["splits"]["test"]["length"]["max"] == 29
  assert any("longer series" in note for note in report["notes"])


def test_inspect_npz(capsys, tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(5.0, 2.0, (30, 50, 3)).astype(np.float32)
  x[0, 3, 1] = np.nan
  y = np.array(["up", "down", "flat"] * 10)
  path = tmp_path / "mine.npz"
  np.savez(path, X=x, y=y)
  code, out, err = run(capsys, "inspect", str(path), "--json")
  assert code == 0, err
  report = json.loads(out)["splits"]["file"]
  assert (report["series"], report["channels"], report["num_classes"]) == (30, 3, 3)
  assert report["missing"] == {"values": 1, "series": 1}
  stats = report["channel_stats"]
  values = x.astype(np.float64)
  for c in range(3):
    assert stats[c]["mean"] == pytest.approx(np.nanmean(values[..., c]), rel=1e-9)
    assert stats[c]["std"] == pytest.approx(np.nanstd(values[..., c]), rel=1e-9)
    assert stats[c]["min"] == pytest.approx(np.nanmin(values[..., c]))
  assert stats[1]["missing"] == 1 and stats[0]["missing"] == 0
  code, out, _ = run(capsys, "inspect", str(path), "--channels", "2")
  assert code == 0 and "30 series x 3 channels, length 50, 3 classes" in out
  assert "1 more channel" in out


def test_inspect_synthetic(capsys):
  code, out, err = run(capsys, "inspect", "synthetic:motif:512", "--split", "train", "--json",
                       "--examples", "3")
  assert code == 0, err
  report = json.loads(out)
  train = report["splits"]["train"]
  assert report["length"] == 512 and train["length"]["max"] == 512
  assert train["series"] == 1024 and train["examined"] == 3 and train["num_classes"] == 4
  assert sum(c["count"] for c in train["classes"]) == 1024
  assert 0.5 < train["values"]["std"] < 2.0
  code, out, _ = run(capsys, "inspect", "synthetic:order:256:channels=2")
  assert code == 0 and "x 2 channels, length 256, 2 classes" in out
  assert "validation:" in out and "test:" in out
  code, _, err = run(capsys, "inspect", "synthetic:motif:16")
  assert code == 2
  assert_one_error(err, "synthetic:motif:16", "motif_length")
  code, _, err = run(capsys, "inspect", "synthetic:nope")
  assert code == 2
  assert_one_error(err, "nope", "motif")


def test_inspect_errors(capsys, tmp_path):
  bad = tmp_path / "Broken_TRAIN.ts"
  bad.write_text("@problemName Broken\n@classLabel true a b\n@data\n1,2,3:a\n4,x,6:b\n")
  code, out, err = run(capsys, "inspect", str(bad))
  assert code == 2 and out == ""
  assert_one_error(err, str(bad), "line 5", "'x'")
  code, _, err = run(capsys, "inspect", "BasicMotion")
  assert code == 2
  assert_one_error(err, "BasicMotion", "not found", "Did you mean BasicMotions")
  code, _, err = run(capsys, "inspect", str(tmp_path / "absent.npz"))
  assert code == 2
  assert_one_error(err, "absent.npz", "file not found")
