"""What the interop scripts share: their command line, the skip protocol (ctest's
SKIP_RETURN_CODE 77 when the Python packages are absent) and running the C++ helper."""
import os
import shutil
import subprocess
import sys

SKIP = 77


def parse_args(doc):
    """(helper executable, work folder) from `script.py HELPER WORK_DIR`, or exits 2."""
    if len(sys.argv) != 3:
        print(doc, file=sys.stderr)
        sys.exit(2)
    return sys.argv[1], sys.argv[2]


def skipped(what, error, install):
    """Reports the skip and returns the code ctest reads as 'skipped'."""
    print(f"skipped: {what} not importable ({error}); pip install {install} to run this test")
    return SKIP


def run_helper(exe, work, capture=False):
    """Runs the C++ helper in a fresh work folder; returns its stdout when captured."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    result = subprocess.run([exe, work], check=True, capture_output=capture, text=True)
    return result.stdout if capture else None
