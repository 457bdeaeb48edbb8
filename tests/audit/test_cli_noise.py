"""``audit noise check`` end to end: a real PNG and honest numbers; bad input exits 2 with one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from audit.cli import main


def test_noise_check_writes_png_and_reports_a_match(tmp_path, capsys):
    out = tmp_path / "check.png"
    assert main(["noise", "check", "--preset", "sharp", "--mas", "100", "--draws", "200", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    worst = float(text.split("checked band:")[1].split("%")[0])
    assert worst < 5.0
    sigma_t, sigma_m = (float(v) for v in text.splitlines()[1].split()[-2:])
    assert abs(sigma_m / sigma_t - 1) < 0.01
    assert list(tmp_path.iterdir()) == [out]  # no temporary files left behind


def test_noise_check_from_a_table(tmp_path, capsys):
    table = tmp_path / "nps.csv"
    table.write_text("freq,nps\n0,0\n0.2,50\n0.4,80\n0.6,20\n0.8,0\n")
    assert main(["noise", "check", "--table", str(table), "--draws", "100", "--out", str(tmp_path / "t.png")]) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mas", "0"], "mAs"),
        (["--spacing", "-1"], "spacing"),
        (["--table", "/nonexistent/nps.csv"], "/nonexistent/nps.csv"),
        (["--out", "/proc/forbidden/x.png"], "/proc/forbidden"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    cmd = [sys.executable, "-m", "audit", "noise", "check", "--draws", "20", "--size", "32"] + args
    if "--out" not in args:
        cmd += ["--out", str(tmp_path / "x.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_bad_table_content_is_named(tmp_path):
    table = tmp_path / "bad.csv"
    table.write_text("f,s\n0,1\n")
    proc = subprocess.run([sys.executable, "-m", "audit", "noise", "check", "--table", str(table)], capture_output=True, text=True)
    assert proc.returncode == 2 and "bad.csv" in proc.stderr and "freq,nps" in proc.stderr


def test_usage_error_exits_2():
    proc = subprocess.run([sys.executable, "-m", "audit", "noise", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
