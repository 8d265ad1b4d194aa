"""Serving the app's Blocks for tests: on 127.0.0.1 only, on a free port, with the app's own
launch options (upload limit, cache deletion, ...)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # app.py and csla_app/ live at the repository root
    sys.path.insert(0, str(REPO))

import app  # noqa: E402
from csla_app.launch import free_port  # noqa: E402


def launch_on_loopback(demo) -> str:
    """Start ``demo`` in the background; returns its URL."""
    port = free_port()
    demo.launch(
        prevent_thread_lock=True,
        server_name="127.0.0.1",
        server_port=port,
        quiet=True,
        **app.launch_options(),
    )
    return f"http://127.0.0.1:{port}/"
