"""`edge-runtime fleet publish|status|rollback|rollout`: the broker-facing side of OTA updates."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_runtime.errors import ConfigError


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--prefix", default="edge", help="topic prefix")
    p.add_argument("--registry", default=str(Path.home() / ".config/edge-runtime/fleet.json"),
                   help="local record of published packages (for rollback)")
    sub = p.add_subparsers(dest="fleet_cmd", required=True)
    pub = sub.add_parser("publish", help="upload a package and set it as desired for a device or group:NAME")
    pub.add_argument("package")
    pub.add_argument("--target", required=True, help="device id, or group:NAME")
    pub.add_argument("--key", required=True, help="Ed25519 private key that signs the desired document")
    pub.add_argument("--url", help="optional HTTP(S) URL of the same archive")
    st = sub.add_parser("status", help="show every device's model, update state and health")
    st.add_argument("--wait", type=float, default=1.0, help="seconds to collect retained messages")
    st.add_argument("--json", action="store_true")
    rb = sub.add_parser("rollback", help="signed rollback of a device or group to a published version")
    rb.add_argument("--target", required=True)
    rb.add_argument("--to", required=True, help="version to go back to")
    rb.add_argument("--key", required=True)
    ro = sub.add_parser("rollout", help="canary rollout: canaries first, watch, promote or roll back")
    ro.add_argument("package")
    ro.add_argument("--key", required=True)
    ro.add_argument("--canary", type=float, help="percent of devices used as canaries")
    ro.add_argument("--canary-devices", help="comma-separated canary device ids")
    ro.add_argument("--group", help="promote through this group's desired document")
    ro.add_argument("--window", type=float, default=30.0, help="seconds to watch the canaries after they commit")
    ro.add_argument("--max-error-rate", type=float, default=0.05)
    ro.add_argument("--previous", help="version to roll canaries back to (from the registry)")


def _link(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from edge_runtime.sync.mqtt import MqttLink, settings_from_url

    link = MqttLink(settings_from_url(args.broker, "fleet-cli", prefix=args.prefix, max_payload=1 << 20), will=False)
    link.start()
    if not link.wait_connected(10):
        raise ConfigError(f"cannot reach broker {args.broker}: {link.last_error or 'timeout'}")
    return link


def run(args: argparse.Namespace) -> int:
    from edge_runtime.package import load_private_key
    from fleet import publish, rollout, status

    link = _link(args)
    topics = link.topics
    registry = publish.Registry(Path(args.registry))
    try:
        if args.fleet_cmd == "status":
            devices = status.collect(link, topics, args.wait)
            print(json.dumps(devices, indent=1) if args.json else status.table(devices))
            return 0
        key = load_private_key(args.key)
        if args.fleet_cmd == "publish":
            pub = publish.upload(link, topics, Path(args.package))
            registry.add(pub)
            doc = publish.set_desired(link, topics, pub, args.target, key, url=args.url)
            print(f"published {pub.name} {pub.version} ({pub.meta.size} bytes, {len(pub.meta.chunk_sha256)} chunks) "
                  f"as desired for {args.target} (sequence {doc.sequence})")
            return 0
        if args.fleet_cmd == "rollback":
            pub = registry.find(args.to)
            publish.set_desired(link, topics, pub, args.target, key, rollback=True)
            print(f"rollback of {args.target} to {pub.name} {pub.version} requested")
            return 0
        pub = publish.upload(link, topics, Path(args.package))
        registry.add(pub)
        seen = status.collect(link, topics, 1.0)
        devices = [d for d in seen if d != "fleet-cli"]
        listed = args.canary_devices.split(",") if args.canary_devices else None
        prev = registry.find(args.previous) if args.previous else None
        res = rollout.rollout(link, topics, pub, devices, key, canary_percent=args.canary, canary_devices=listed,
                              window_s=args.window, max_error_rate=args.max_error_rate, group=args.group,
                              previous=prev)
        print(json.dumps({"promoted": res.promoted, "canaries": res.canaries, "reason": res.reason,
                          "states": res.states}, indent=1))
        return 0 if res.promoted else 1
    finally:
        link.stop()
