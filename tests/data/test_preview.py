"""`worldstream preview`: writes a playable mp4 and a contact sheet (tiny size, seconds)."""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from worldstream.cli import main as cli_main
from worldstream.data.preview import contact_sheet, draw_hud, parse_size


def test_preview_writes_video_and_contact_sheet(tmp_path, capsys):
    out = tmp_path / "pv"
    rc = cli_main(
        ["preview", "--seed", "2", "--out", str(out), "--frames", "12", "--size", "32x48", "--scale", "2"]
    )
    assert rc == 0
    mp4, png = out / "preview.mp4", out / "contact_sheet.png"
    printed = capsys.readouterr().out
    assert str(mp4) in printed and str(png) in printed and "prompt:" in printed
    reader = imageio.get_reader(mp4)
    try:
        assert reader.get_meta_data()["fps"] == pytest.approx(16.0)
        frames = [f for f in reader]
    finally:
        reader.close()
    assert len(frames) == 12 and frames[0].shape == (64, 96, 3)
    assert np.std(frames[0]) > 5
    sheet = Image.open(png)
    assert sheet.size[0] > 96 and sheet.size[1] > 64
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_preview_bad_input(tmp_path, capsys):
    assert cli_main(["preview", "--size", "95x160", "--out", str(tmp_path)]) == 2
    assert "--size needs positive even height and width" in capsys.readouterr().err
    assert cli_main(["preview", "--trajectory", "moonwalk", "--out", str(tmp_path)]) == 2
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_size("big")


def test_hud_and_sheet_drawing():
    frame = np.zeros((48, 80, 3), np.uint8)
    kb = np.array([1, 0, 0, 0, 0, 0], np.float32)
    hud = draw_hud(frame, kb, np.array([0.0, 0.1], np.float32))
    assert hud.shape == frame.shape and hud.any(), "HUD must draw something"
    lit = draw_hud(frame, kb, np.zeros(2, np.float32))
    idle = draw_hud(frame, np.zeros(6, np.float32), np.zeros(2, np.float32))
    assert (lit != idle).any(), "a held W key must look different"
    sheet = contact_sheet(np.zeros((30, 8, 10, 3), np.uint8), count=6, columns=3, scale=1)
    assert sheet.shape[0] > 2 * 8 and sheet.shape[1] > 3 * 10
