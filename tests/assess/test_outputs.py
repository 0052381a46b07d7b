"""The output folder's files and lock (segqc.assess.outputs, segqc.assess.lock)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from segqc.assess import OutputInUseError, check_output_folder, output_lock
from segqc.assess.lock import LOCK_FILE
from segqc.assess.outputs import QUALITY_COLUMNS, escape_cell, read_csv, unescape_cell, write_csv
from segqc.errors import SegQCError


@pytest.mark.parametrize(
    "value", ["=1+1", "+1", "-0.5", "-cmd", "@SUM(A1)", "\tx", "\rx", "'quoted", "''", "plain", "/a/b", ""]
)
def test_cells_are_escaped_reversibly(value):
    escaped = escape_cell(value)
    assert not escaped.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert unescape_cell(escaped) == value


def test_csv_text_cells_neutralised_numbers_kept(tmp_path):
    row = {
        "id": "=HYPERLINK(\"http://x\")", "predicted_jaccard": "0.500000", "decision": "refer",
        "reason": "-x", "jaccard_lower": "-0.125000", "threshold": "0.5", "mean_uncertainty": "0.1",
        "source": "@evil", "input_sha256": "ab" * 32,
    }  # fmt: skip
    write_csv(tmp_path / "q.csv", QUALITY_COLUMNS, [row])
    text = (tmp_path / "q.csv").read_text()
    assert "'=HYPERLINK" in text and ",'-x," in text and ",'@evil" in text
    assert ",-0.125000," in text and ",0.500000," in text  # numbers stay numbers
    assert read_csv(tmp_path / "q.csv", QUALITY_COLUMNS) == [row]


def test_check_output_folder(tmp_path):
    assert check_output_folder(tmp_path / "new" / "out").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(SegQCError, match="is a file"):
        check_output_folder(tmp_path / "f")
    with pytest.raises(SegQCError, match="is a file"):
        check_output_folder(tmp_path / "f" / "below")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "masks").write_text("x")
    with pytest.raises(SegQCError, match="masks: is a file"):
        check_output_folder(tmp_path / "o")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_check_output_folder_read_only(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(SegQCError, match="cannot write there"):
            check_output_folder(tmp_path / "ro")
        with pytest.raises(SegQCError, match="cannot write there"):
            check_output_folder(tmp_path / "ro" / "sub")
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_check_output_folder_not_writable(tmp_path, monkeypatch):
    """The same path as a read-only folder for a non-root user (root writes anywhere, so simulated)."""
    import segqc.assess.outputs

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(segqc.assess.outputs.tempfile, "mkstemp", denied)
    with pytest.raises(SegQCError, match=r"cannot write there \(Permission denied\)"):
        check_output_folder(tmp_path)


def test_lock_is_reentrant_in_a_thread_and_exclusive_across_threads(tmp_path):
    seen = []

    def other():
        try:
            with output_lock(tmp_path):
                seen.append("got it")
        except OutputInUseError as err:
            seen.append(str(err))

    with output_lock(tmp_path), output_lock(tmp_path):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert seen == [f"{tmp_path} is in use by another segqc predict run (pid {os.getpid()})"]
    with output_lock(tmp_path):  # released
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert (tmp_path / LOCK_FILE).read_text() == ""


def test_lock_held_by_another_process_is_refused_with_its_pid(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from segqc.assess import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        message = rf"in use by another segqc predict run \(pid {holder.pid}\)"
        with pytest.raises(OutputInUseError, match=message), output_lock(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(tmp_path):  # the kernel dropped the dead holder's lock
        pass
