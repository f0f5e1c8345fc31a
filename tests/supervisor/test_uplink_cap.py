"""The supervisor's side of --bwlimit: the timetable's rate written into the shared
bucket once a second, a change logged, and a dead worker's live stamp forgotten."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from structlog.testing import capture_logs

from shared.bandwidth import parse_bwlimit
from shared.settings import Settings
from supervisor.uplink_cap import CapKeeper

MIB = 1024 * 1024


def test_the_timetables_rate_is_written_within_a_second_of_a_change(tmp_path: Path) -> None:
    now = [100.0]
    local = [datetime(2026, 12, 7, 7, 59, 59)]  # a Monday
    settings = Settings(watch_dir=tmp_path, workers=2,
                        bwlimit=parse_bwlimit("Mon-Fri 08:00,2MiB/s 19:00,off"))
    with capture_logs() as logs:
        keeper = CapKeeper(settings, structlog_logger(), clock=lambda: now[0],
                           local_time=lambda: local[0])
        assert keeper.uplink is not None and keeper.uplink.rate is None  # Sunday's off
        local[0] = datetime(2026, 12, 7, 8, 0, 0)
        now[0] += 0.5
        keeper.tick()                             # within the second: not looked at yet
        assert keeper.uplink.rate is None
        now[0] += 0.5
        keeper.tick()
        assert keeper.uplink.rate == 2 * MIB
        assert keeper.describe() == "2MiB/s (timetable Mon-Fri 08:00,2MiB/s 19:00,off)"
    (changed,) = [e for e in logs if e["event"] == "uplink_cap_changed"]
    assert (changed["cap"], changed["was"]) == ("2MiB/s", "off")
    keeper.close()
    assert not Path(keeper.uplink.lock_path).exists()


def test_no_bwlimit_creates_nothing(tmp_path: Path) -> None:
    keeper = CapKeeper(Settings(watch_dir=tmp_path), structlog_logger())
    keeper.tick()
    keeper.forget(0)
    keeper.close()
    assert keeper.uplink is None and keeper.describe() is None


def structlog_logger() -> object:
    import structlog
    return structlog.get_logger()
