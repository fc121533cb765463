"""The layout debugging aid shows every packed token's role and the exact mask."""

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
