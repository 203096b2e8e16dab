"""Progress reporting: the terminal line (percent, count, rate, ETA), log lines, the switch, errors."""

import io
import logging

import numpy as np
import pytest

from tfrec_towers.evaluation import target_ranks
from tfrec_towers.progress import format_duration, progress, set_progress

LOGGER = "tfrec_towers.progress"


class Terminal(io.StringIO):
    def isatty(self):
        return True


class FakeClock:
    """Returns the times set by the test."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def screen(stream):
    """The text a terminal shows: each ``\\r`` returns to the line start and overwrites."""
    lines = []
    for line in stream.getvalue().split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part) :]
        lines.append(shown.rstrip())
    return lines


@pytest.fixture(autouse=True)
def wide_terminal_and_enabled(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    set_progress(True)
    yield
    set_progress(True)


def test_terminal_line_shows_percent_count_rate_and_eta():
    stream, clock = Terminal(), FakeClock()
    with progress("Embedding", total=100_000, unit="rows", stream=stream, clock=clock) as bar:
        clock.now = 0.5
        bar.update(10_000)
        assert stream.getvalue() == ""  # nothing during the first second
        clock.now = 3.0
        bar.update(35_000)
        # 45,000 rows in 3 s: 15,000 rows/s; 55,000 rows left: 55,000 / 15,000 = 3.67 s.
        assert screen(stream) == ["Embedding  45% |████▌     | 45,000/100,000 rows  15,000 rows/s  ETA 3.7s"]
        drawn = stream.getvalue()
        clock.now = 3.05
        bar.update(1_000)
        assert stream.getvalue() == drawn  # at most one redraw per 0.1 s
        clock.now = 5.0
        bar.update(54_000)
    # 100,000 rows in 5 s: 20,000 rows/s.
    assert screen(stream) == ["Embedding  100,000/100,000 rows in 5.0s (20,000 rows/s)", ""]


def test_unknown_total_shows_count_rate_and_elapsed_time():
    stream, clock = Terminal(), FakeClock()
    with progress("Reading", unit="ratings", stream=stream, clock=clock) as bar:
        assert screen(stream) == ["Reading …"]
        clock.now = 2.0
        bar.update(9_000)
        assert screen(stream) == ["Reading  9,000 ratings  4,500 ratings/s  2.0s"]
        clock.now = 75.0
    # 9,000 ratings in 75 s: 120 ratings/s.
    assert screen(stream) == ["Reading  9,000 ratings in 1m15s (120 ratings/s)", ""]


def test_a_short_task_leaves_nothing_on_a_terminal():
    stream, clock = Terminal(), FakeClock()
    with progress("Quick", total=3, stream=stream, clock=clock) as bar:
        clock.now = 0.4
        bar.update(3)
    with progress("Quick phase", stream=stream, clock=clock):
        clock.now = 0.9
    assert [line for line in screen(stream) if line] == []


def test_a_phase_reports_its_elapsed_time():
    stream, clock = Terminal(), FakeClock()
    with progress("Building ScaNN index (50,000 × 32)", stream=stream, clock=clock):
        clock.now = 42.0
    assert screen(stream) == ["Building ScaNN index (50,000 × 32)  done in 42s", ""]


def test_an_exception_erases_the_bar_and_propagates():
    stream, clock = Terminal(), FakeClock()
    with pytest.raises(KeyError, match="boom"):
        with progress("Failing", total=10, stream=stream, clock=clock) as bar:
            clock.now = 2.0
            bar.update(4)
            assert screen(stream) == ["Failing  40% |████      | 4/10 rows  2.0 rows/s  ETA 3.0s"]
            raise KeyError("boom")
    assert "\n" not in stream.getvalue()
    assert screen(stream) == [""]
    assert stream.getvalue().endswith("\r")


def test_log_lines_at_most_every_tenth_and_30_seconds_then_a_final_line(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    stream, clock = io.StringIO(), FakeClock()
    with progress("Ranking", total=1_000, unit="queries", stream=stream, clock=clock) as bar:
        for now, done in ((10.0, 500), (40.0, 50), (60.0, 100), (70.0, 100), (95.0, 250)):
            clock.now = now
            bar.update(done)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    # t=10: under 30 s. t=40: 550 done, rate 550/40 = 13.75/s, 450 left -> 32.7 s. t=60: 20 s after that line.
    # t=70: 200 more (>= 10%) and 30 s later: rate 750/70 = 10.71/s, 250 left -> 23.3 s. t=95: 25 s after.
    # Final: 1,000 in 95 s = 10.53/s.
    assert messages == [
        "Ranking  55% 550/1,000 queries  13.8 queries/s  ETA 33s",
        "Ranking  75% 750/1,000 queries  10.7 queries/s  ETA 23s",
        "Ranking  1,000/1,000 queries in 1m35s (10.5 queries/s)",
    ]
    assert stream.getvalue() == ""


def test_track_counts_each_item():
    stream, clock = io.StringIO(), FakeClock()
    with progress("Features", total=4, unit="features", stream=stream, clock=clock) as bar:
        assert list(bar.track("abcd")) == list("abcd")
        clock.now = 2.0
    assert bar.count == 4


def test_disabled_progress_prints_and_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    set_progress(False)
    terminal, clock = Terminal(), FakeClock()
    for stream in (terminal, io.StringIO()):
        with progress("Silent", stream=stream, clock=clock) as bar:
            clock.now += 100.0
            bar.update(5)
    assert terminal.getvalue() == ""
    assert [r for r in caplog.records if r.name == LOGGER] == []


def test_no_log_line_after_an_exception(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    with pytest.raises(ValueError):
        with progress("Failing", total=2, stream=io.StringIO()) as bar:
            bar.update(1)
            raise ValueError
    assert [r for r in caplog.records if r.name == LOGGER] == []


@pytest.mark.parametrize(
    "seconds, text", [(0.04, "0.0s"), (4.25, "4.2s"), (42.4, "42s"), (185.0, "3m05s"), (7_620.0, "2h07m")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_bad_total_is_named():
    with pytest.raises(ValueError, match="`total` must be a non-negative int or None. Received: -1"):
        progress("x", total=-1)


def test_target_ranks_logs_the_number_of_queries(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger=LOGGER)
    monkeypatch.setattr("tfrec_towers.progress.QUIET_SECONDS", 0.0)  # log even this short task
    rng = np.random.default_rng(0)
    queries, candidates = rng.normal(size=(7, 4)), rng.normal(size=(30, 4))
    ranks = target_ranks(
        queries,
        candidates,
        np.arange(1, 31),
        np.arange(1, 8),
        np.zeros(8, np.int64),
        np.zeros(0, np.int64),
        query_chunk=3,
    )
    scores = queries @ candidates.T
    expected = [(scores[u] > scores[u, u]).sum() for u in range(7)]  # target u is candidate row u
    np.testing.assert_array_equal(ranks, expected)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == 1 and messages[0].startswith("Ranking among 30 candidates  7/7 queries in ")


def test_a_short_task_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    with progress("Quick", total=3, unit="rows") as bar:
        bar.update(3)
    assert not [r for r in caplog.records if r.name == LOGGER]
