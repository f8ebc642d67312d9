"""Archives: pack, use in place of a directory, and refuse every unsafe or unlisted member."""

from __future__ import annotations

import io
import tarfile

import pytest

import paritybundle
from paritybundle.cli import main
from paritybundle.commands.pack import pack
from paritybundle.errors import BundleExistsError, BundleInvalid


@pytest.fixture
def archive(digits_bundle, tmp_path):
    return pack(digits_bundle, tmp_path / "digits.tar.gz")


def test_packed_archive_is_accepted_by_every_command(archive, capsys):
    assert paritybundle.check(archive).passed
    for command in (["verify"], ["inspect"], ["check"], ["env"]):
        assert main([*command, str(archive)]) == 0
    assert "PARITY HOLDS" in capsys.readouterr().out


def test_pack_puts_the_manifest_first_and_is_reproducible(digits_bundle, archive, tmp_path):
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names[0] == "bundle.json" and "pipeline.onnx" in names
        assert all(m.uid == 0 and m.mode == 0o644 for m in tar.getmembers())
    again = pack(digits_bundle, tmp_path / "again.tar.gz")
    assert again.read_bytes() == archive.read_bytes()


def test_pack_refuses_to_overwrite_and_refuses_a_tampered_bundle(digits_bundle, archive, bundle_copy, tmp_path):
    with pytest.raises(BundleExistsError, match="already exists"):
        pack(digits_bundle, archive)
    (bundle_copy / "model.onnx").write_bytes(b"x")
    with pytest.raises(BundleInvalid, match="model.onnx"):
        pack(bundle_copy, tmp_path / "bad.tar.gz")
    assert not (tmp_path / "bad.tar.gz").exists()


def _rewrite(archive, tmp_path, extra=(), drop=(), first=None):
    """A copy of `archive` with members dropped and extra TarInfo members added."""
    target = tmp_path / "evil.tar.gz"
    with tarfile.open(archive) as source, tarfile.open(target, "w:gz") as sink:
        members = [(m, source.extractfile(m).read()) for m in source.getmembers() if m.name not in drop]
        if first is not None:
            sink.addfile(*first)
        for info, data in members:
            sink.addfile(info, io.BytesIO(data))
        for info, data in extra:
            sink.addfile(info, None if data is None else io.BytesIO(data))
    return target


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


@pytest.mark.parametrize(
    "member, message",
    [
        (_file("/etc/evil"), "absolute path"),
        (_file("../evil"), "climbs out"),
        (_file("reference/../../evil"), "climbs out"),
        (_special("link", tarfile.SYMTYPE, "/etc/passwd"), "is a symlink"),
        (_special("hard", tarfile.LNKTYPE, "model.onnx"), "is a hard link"),
        (_special("dev", tarfile.CHRTYPE), "is a device"),
        (_special("fifo", tarfile.FIFOTYPE), "is a FIFO"),
        (_file("model.onnx"), "appears twice"),
        (_file("unlisted.bin"), "not listed in bundle.json"),
        (_file("a\\b"), "backslash"),
    ],
)
def test_unsafe_members_are_refused(archive, tmp_path, member, message):
    evil = _rewrite(archive, tmp_path, extra=[member])
    with pytest.raises(BundleInvalid, match=message):
        paritybundle.verify(evil)


def test_unlisted_member_before_the_manifest_is_refused(archive, tmp_path):
    evil = _rewrite(archive, tmp_path, first=(_file("payload.bin")[0], io.BytesIO(b"x")))
    with pytest.raises(BundleInvalid, match="payload.bin"):
        paritybundle.verify(evil)


def test_missing_member_is_refused(archive, tmp_path):
    with pytest.raises(BundleInvalid, match="reference/outputs.npz is listed"):
        paritybundle.verify(_rewrite(archive, tmp_path, drop=("reference/outputs.npz",)))


def test_bounds_on_size_and_member_count(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("PARITYBUNDLE_MAX_UNPACKED_BYTES", "1000")
    with pytest.raises(BundleInvalid, match="unpacks to more than 1000 bytes"):
        paritybundle.verify(archive)
    monkeypatch.delenv("PARITYBUNDLE_MAX_UNPACKED_BYTES")
    monkeypatch.setattr("paritybundle.bundle.archive.MAX_MEMBERS", 3)
    with pytest.raises(BundleInvalid, match="more than 3 members"):
        paritybundle.verify(_rewrite(archive, tmp_path))


def test_gzip_bomb_is_refused_from_its_declared_size(tmp_path, monkeypatch):
    # 64 MiB of zeros compresses to ~64 KiB; the declared size gives it away before it is written.
    monkeypatch.setenv("PARITYBUNDLE_MAX_UNPACKED_BYTES", str(16 * 1024 * 1024))
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        info = tarfile.TarInfo("bundle.json")
        info.size = 64 * 1024 * 1024
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert bomb.stat().st_size < 1024 * 1024
    # Refused from the header, before anything is unpacked: no manifest is that big.
    with pytest.raises(BundleInvalid, match="declares 67108864 bytes, more than a bundle.json can hold"):
        paritybundle.verify(bomb)


@pytest.mark.parametrize("content", [b"", b"not an archive at all", b"\x1f\x8b\x08\x00garbage"])
def test_corrupt_archives_are_bundle_invalid(tmp_path, content, capsys):
    path = tmp_path / "broken.tar.gz"
    path.write_bytes(content)
    assert main(["verify", str(path)]) == 3
    assert "Traceback" not in capsys.readouterr().err


def test_truncated_archive_is_bundle_invalid(archive, tmp_path):
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(BundleInvalid, match="truncated|not a readable|not a gzip|archive"):
        paritybundle.verify(cut)


def test_cli_pack(digits_bundle, tmp_path, capsys):
    target = tmp_path / "d.tar.gz"
    assert main(["pack", str(digits_bundle), "-o", str(target)]) == 0
    assert main(["pack", str(digits_bundle), "-o", str(target)]) == 2
    assert main(["check", str(target)]) == 0
