"""Command line: ``python -m csla_core <command> ...``.

The one entry point. Commands live in one module per group (``photos``, ``latent``, ``training``,
``evaluation``), share one vocabulary of flags (``options``) and raise ``CSLAError`` for a
user-facing problem (missing weights, bad photo, ...); :func:`main` alone turns it into a
one-line ``error: ...`` on stderr and exit status 2, instead of a stack trace.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from ..errors import CSLAError

# command -> (module, function, one-line help). Modules import lazily so `--help` stays instant.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "download": (
        "csla_core.cli.photos",
        "download_command",
        "download every weight file (pinned, verified)",
    ),
    "align": (
        "csla_core.cli.photos",
        "align_command",
        "detect faces and write the FFHQ-aligned crop",
    ),
    "invert": (
        "csla_core.cli.photos",
        "invert_command",
        "photo -> W+ code (.pt) and reconstruction",
    ),
    "edit": (
        "csla_core.cli.photos",
        "edit_command",
        "edit the face in a photo (or a folder) from a prompt",
    ),
    "generate": (
        "csla_core.cli.photos",
        "generate_command",
        "text-to-image through the CSLA mappers",
    ),
    "calibrate": (
        "csla_core.cli.training",
        "calibrate_command",
        "make CSLA mappers for the loaded models, data-free, in minutes",
    ),
    "train": (
        "csla_core.cli.training",
        "train_command",
        "data-free CSLA mapper training (--tiny: CPU demo)",
    ),
    "ablate": (
        "csla_core.cli.training",
        "ablate_command",
        "train one mapper per centre strategy / mixing mode and compare them",
    ),
    "evaluate": (
        "csla_core.cli.evaluation",
        "evaluate_command",
        "CLIP score, identity, diversity, time: CSLA vs baseline",
    ),
    "edit-latent": (
        "csla_core.cli.latent",
        "edit_latent_command",
        "edit a W+ code file or a random face (--tiny ok)",
    ),
    "generate-latent": (
        "csla_core.cli.latent",
        "generate_latent_command",
        "text-to-image to W+ files (--tiny ok)",
    ),
    "compare-calibration": (
        "csla_core.cli.evaluation",
        "compare_calibration_command",
        "the experiment behind the calibration recipe (tiny models)",
    ),
    "fidelity": (
        "csla_core.cli.evaluation",
        "fidelity_command",
        "how close results stay to the person: e4e, + detail kept, + refinement",
    ),
    "check-mappers": (
        "csla_core.cli.evaluation",
        "check_mappers_command",
        "do the mappers find the published smile / age directions? (real models)",
    ),
    "bench": ("csla_core.cli.evaluation", "bench_command", "per-stage timings at real sizes"),
}


def _resolve(name: str) -> Callable[[list[str]], int]:
    module, function, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
        print(
            "usage: python -m csla_core <command> [options]   (python -m csla_core <command> "
            "--help: its options)\n\ncommands:\n" + "\n".join(lines)
        )
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command: {argv[0]}", file=sys.stderr)
            return 2
        return 0
    try:
        return _resolve(argv[0])(argv[1:])
    except CSLAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
