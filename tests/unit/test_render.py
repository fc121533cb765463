"""The layout debugging aid shows every packed token's role and the exact mask."""

import os

import torch

from mtp_ds.cli import main as cli_main
from mtp_ds.layout import pack
from mtp_ds.render import render_png, render_text, token_roles


def test_text_rendering_matches_the_mask(tmp_path):
    packed = pack(torch.arange(20), k=3, offset=1, mtp_token_id=99, k_max=4, eos_token_id=14)
    roles = token_roles(packed)
    assert roles[:5] == ["gt", "anchor 0", "mask 0.1", "mask 0.2", "gt"] and roles[-1] == "pad"
    text = render_text(packed)
    grid = [
        line.split()[1]
        for line in text.splitlines()
        if line[:4].strip().isdigit() and set(line.split()[1]) <= {"#", "."}
    ]
    assert grid == ["".join("#" if a else "." for a in row) for row in packed.attention_mask.tolist()]
    render_png(packed, tmp_path / "layout.png")
    assert (tmp_path / "layout.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_show_layout(capsys, tmp_path):
    assert cli_main(["show-layout", "--k", "2", "--png", str(tmp_path / "m.png")]) == 0
    assert "mask 0.1" in capsys.readouterr().out
    assert cli_main(["show-layout", "--k", "9"]) == 2
    assert capsys.readouterr().err.strip() == "mtp-ds show-layout: k must be in [1, k_max=4], got 9"


def test_show_layout_png_defaults_to_outputs(capsys, tmp_path, monkeypatch):
    """`--png` alone writes outputs/layout.png (created; git ignores outputs/), never into the repository root."""
    monkeypatch.chdir(tmp_path)
    assert (
        cli_main(["show-layout", "--png", "--k", "9"]) == 2 and list(tmp_path.iterdir()) == []
    )  # refused: nothing made
    assert cli_main(["show-layout", "--png"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "wrote outputs/layout.png"
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == ["outputs", "outputs/layout.png"]


def test_show_layout_png_that_cannot_be_written_is_one_line(capsys, tmp_path):
    """Refused in one line before anything is printed: a directory this user may not write (skipped for root, who
    may), a name longer than the file system allows (for root too)."""
    read_only = tmp_path / "mount"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        if not os.access(read_only, os.W_OK):
            assert cli_main(["show-layout", "--png", str(read_only / "m.png")]) == 2
            captured = capsys.readouterr()
            assert captured.out == "" and captured.err.splitlines() == [
                f"mtp-ds show-layout: --png {read_only / 'm.png'}: directory {str(read_only)!r} is not writable "
                "(read-only, or not yours)"
            ]
    finally:
        read_only.chmod(0o755)
    too_long = tmp_path / ("x" * 300 + ".png")
    assert cli_main(["show-layout", "--png", str(too_long)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(
        f"mtp-ds show-layout: --png {too_long}: cannot write it: [Errno 36]"
    )
    assert len(captured.err.splitlines()) == 1
