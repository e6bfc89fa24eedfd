"""The chaos suite: its marker, and its tables in the terminal summary."""

from __future__ import annotations

import pytest

# Tables the chaos tests produced, shown at the end of the run (also without -s).
TABLES: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: faults under load with real processes in network namespaces (needs root and iproute2)"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TABLES:
        terminalreporter.section("chaos")
        terminalreporter.write_line(TABLES[-1])
