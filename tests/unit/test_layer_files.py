"""A layer is an image's content, read on the host as root: its links must never lead the node
to the host's own files (an image whose ``etc/shadow -> /etc/shadow`` had the host's shadow
copied into the template, readable by every sandbox of it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emberbox.templates.oci import ImageError, _top_file
from emberbox.templates.store import LayerFile, LayerFileUnsafe, TemplateStore, read_layer_file


@pytest.fixture
def host_secret(tmp_path: Path) -> Path:
    secret = tmp_path / "host" / "shadow"
    secret.parent.mkdir()
    secret.write_text("root:$6$host-secret:19000::::::\n")
    return secret


def test_links_anywhere_on_the_way_are_refused_not_followed(
    tmp_path: Path, host_secret: Path
) -> None:
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    os.symlink(host_secret, layer / "etc" / "shadow")
    os.symlink("../../host/shadow", layer / "etc" / "group")
    assert read_layer_file(layer, "etc/passwd") == LayerFile(text="root:x:0:0::/root:/bin/sh\n")
    assert read_layer_file(layer, "etc/missing") == LayerFile()
    for rel in ("etc/shadow", "etc/group"):
        with pytest.raises(LayerFileUnsafe, match="not a regular file"):
            read_layer_file(layer, rel)
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(host_secret.parent, linked / "etc")  # the directory itself a link
    with pytest.raises(LayerFileUnsafe, match="not a directory"):
        read_layer_file(linked, "etc/shadow")


@pytest.mark.skipif(os.geteuid() != 0, reason="a whiteout (0:0 device) needs root to make")
def test_a_whiteout_hides_what_lower_layers_hold(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    os.mknod(layer / "etc" / "shadow", 0o600 | 0o020000, os.makedev(0, 0))
    assert read_layer_file(layer, "etc/shadow") == LayerFile(whiteout=True)


def test_an_image_s_linked_account_files_fail_its_build(
    tmp_path: Path, host_secret: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBERBOX_DATA_DIR", str(tmp_path / "data"))
    store = TemplateStore()
    lower, upper = "a" * 64, "b" * 64
    for key in (lower, upper):
        (store.layer_path(key) / "etc").mkdir(parents=True)
    (store.layer_path(lower) / "etc" / "shadow").write_text("root:*:19000::::::\n")
    assert _top_file(store, [lower, upper], "etc/shadow") == "root:*:19000::::::\n"
    os.symlink(host_secret, store.layer_path(upper) / "etc" / "shadow")
    with pytest.raises(ImageError, match="not a regular file"):
        _top_file(store, [lower, upper], "etc/shadow")
