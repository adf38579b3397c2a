"""`edge-runtime`: one command, many subcommands.

Subcommands live in their own modules and are imported only when chosen, so `edge-runtime run` on a device never
imports the converter (TensorFlow) or the benchmark (matplotlib). Each module provides::

    def configure(parser: argparse.ArgumentParser) -> None   # add arguments
    def run(args: argparse.Namespace) -> int                 # do the work, return the exit code

User mistakes raise EdgeRuntimeError subclasses and end as one line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

# The device's commands use no pydantic plugins; without this, the first model class scans every installed
# distribution's entry points for them (about 0.1 s of CPU at each start here). An explicit setting is kept.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from edge_runtime.errors import EdgeRuntimeError  # noqa: E402

# name -> (module, one-line help). The one table of subcommands.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("edge_runtime.commands.demo", "build the demo face-detection package and run it on a clip, offline"),
    "convert": ("converters.command", "convert and quantize a model into a signed package for a device profile"),
    "inspect": ("edge_runtime.commands.package_cmds", "print a package's summary (--json: its manifest)"),
    "verify": ("edge_runtime.commands.package_cmds", "check a package's hashes and signature"),
    "sign": ("edge_runtime.commands.package_cmds", "sign a package with an Ed25519 key"),
    "keygen": ("edge_runtime.commands.package_cmds", "create an Ed25519 signing key pair"),
    "pack": ("edge_runtime.commands.package_cmds", "write a package directory as one .erpkg archive"),
    "profiles": ("edge_runtime.commands.profiles", "list or show device profiles"),
    "run": ("edge_runtime.commands.run", "run a package on a camera, video or sensor source (offline)"),
    "serve": ("edge_runtime.commands.serve", "serve a package as a small HTTP microservice"),
    "agent": ("edge_runtime.commands.agent", "device agent: run, report metrics over MQTT and apply OTA updates"),
    "bench": ("edge_runtime.benchmark.command", "benchmark model variants (formats, precision, threads)"),
    "registry": ("fleet.registry_cli", "model registry on the fleet server: list, show, lineage, promote, revert"),
    "retrain": ("fleet.retrain.cli", "re-training on the fleet server: run, list, show, approve, cancel, worker"),
    "fleet": ("fleet.command", "publish packages to devices, roll out canary-first, status, rollback"),
}


def _pick_command(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-runtime", description="Edge inference runtime.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _pick_command(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = _import_command(name, module_name)
            module.configure(p)
            p.set_defaults(_module=module)
    return parser


def _import_command(name: str, module_name: str):  # type: ignore[no-untyped-def]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or "?"
        if missing.split(".")[0] in ("edge_runtime", "converters", "fleet"):
            raise
        raise EdgeRuntimeError(
            f"'{name}' needs the Python package '{missing}', which is not installed "
            f"(pip install 'edge-runtime[all]' installs every extra)"
        ) from exc


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        level = logging.WARNING - 10 * min(args.verbose, 2)
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if not getattr(args, "_module", None):
            parser.print_help()
            return 2
        return int(args._module.run(args) or 0)
    except EdgeRuntimeError as exc:
        print(f"edge-runtime: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edge-runtime: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
