"""shared.logs: every line a process logs, even a library's warning, is one JSON object."""

from __future__ import annotations

import json
import subprocess
import sys


def test_python_warnings_become_json_log_lines() -> None:
    code = (
        "import warnings\n"
        "from shared.logs import configure_logging, get_logger\n"
        "configure_logging('info', 'json', process='worker-0')\n"
        "warnings.warn('Callback with id 1 exists. It will be Overwritten.', RuntimeWarning)\n"
        "get_logger().info('after')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stderr == ""
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in lines] == ["python_warning", "after"]
    warning = lines[0]
    assert warning["category"] == "RuntimeWarning"
    assert "Overwritten" in warning["message"] and warning["process"] == "worker-0"
    assert warning["level"] == "warning" and warning["source"].startswith("<string>:")
