"""`edge-runtime profiles list|show NAME`."""

from __future__ import annotations

import argparse
import json

import yaml

from edge_runtime.profiles import list_profiles, load_profile


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="list known profiles (built-in and $EDGE_RUNTIME_PROFILE_PATH)")
    show = sub.add_parser("show", help="print one profile")
    show.add_argument("name", help="profile name or path to a YAML file")
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        for name, path in list_profiles().items():
            profile = load_profile(path)
            print(f"{name:18} {profile.cpu.arch:8} {profile.formats.preferred:7} {profile.description}")
        return 0
    profile = load_profile(args.name)
    data = profile.model_dump(mode="json")
    print(json.dumps(data, indent=2) if args.json else yaml.safe_dump(data, sort_keys=False).rstrip())
    return 0
