"""Reading user files and writing results: one sentence per unreadable file; umask permissions."""

from __future__ import annotations

import os
import stat

import pytest

from podbench.errors import UserError
from podbench.fileio import atomic_write, read_user_text


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_write_gets_the_mode_a_plain_open_gets(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.json", "{}")
        (tmp_path / "b.json").write_text("{}")  # the reference: an ordinary open()
    finally:
        os.umask(old)
    mode_a = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    mode_b = stat.S_IMODE((tmp_path / "b.json").stat().st_mode)
    assert mode_a == mode_b == 0o666 & ~umask
    assert (tmp_path / "a.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_atomic_write_bytes_and_nested_folder(tmp_path):
    path = atomic_write(tmp_path / "x" / "y" / "f.bin", b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"


@pytest.mark.parametrize(
    ("content", "phrase"),
    [(b"a: 1\n\x00\x00", "binary"), ("é: 1\n".encode("latin-1"), "not UTF-8")],
)
def test_unreadable_text_is_one_sentence(tmp_path, content, phrase):
    path = tmp_path / "suite.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError, match=phrase) as info:
        read_user_text(path, "suite file")
    assert str(path) in str(info.value)


def test_folder_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        read_user_text(tmp_path, "suite file")
    with pytest.raises(UserError, match="does not exist"):
        read_user_text(tmp_path / "nope.yaml", "suite file")


def test_no_permission(tmp_path, monkeypatch):
    # Tests run as root in CI, where chmod 0 does not stop a read: raise what the OS would.
    path = tmp_path / "s.yaml"
    path.write_text("a: 1")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "read_bytes", refuse)
    with pytest.raises(UserError, match="permission denied"):
        read_user_text(path, "suite file")


def test_utf8_text_is_returned(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: é\n", encoding="utf-8")
    assert read_user_text(path, "suite file") == "name: é\n"


@pytest.mark.parametrize(
    "uri", ["s3://bucket/x", "gs://bucket/x", "hdfs://namenode/x", "file://otherhost/tmp/x"]
)
def test_uri_results_locations_are_refused_in_one_sentence_and_write_nothing(
    tmp_path, monkeypatch, capsys, uri
):
    from podbench.cli import main

    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: s\nlosses: [softmax]\ndatasets: [digits]\narchs: [mlp]\nfeat_dim: [8]\nepochs: 1\nseeds: 1\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(suite), "--results", uri]) == 2
    err = capsys.readouterr().err
    assert f"--results {uri}: URIs are not supported" in err and "Traceback" not in err
    assert err.strip().count("\n") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # no ./s3:/bucket/x


def test_file_uris_are_read_as_their_path(tmp_path):
    from urllib.parse import quote

    from podbench.cli_args import results_folder
    from podbench.fileio import local_path
    from podbench.results import ResultsStore

    folder = tmp_path / "with space"
    assert results_folder(f"file://{quote(str(folder))}", "x") == folder
    assert local_path(f"file://localhost{folder}", "--out") == folder
    assert ResultsStore(f"file://{tmp_path}").root == tmp_path
    assert local_path("relative/dir", "--results") == __import__("pathlib").Path("relative/dir")
