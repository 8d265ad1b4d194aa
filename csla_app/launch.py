"""Running the app privately on 127.0.0.1: a free port and the environment of ``python app.py``
(shared by the tests and scripts/load_test.py)."""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_environment(port: int, **overrides: str) -> dict[str, str]:
    """The environment for ``python app.py`` on 127.0.0.1:``port``, offline, without analytics,
    and with none of the caller's own CSLA_* settings (then ``overrides``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSLA_")}
    env.update(
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
    )
    env.update(overrides)
    return env
