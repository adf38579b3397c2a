"""The one place that spells MQTT topic strings. Every payload is JSON with a ``schema`` field ("NAME/VERSION").

Layout under a configurable prefix (default ``edge``)::

    {p}/devices/{device}/state             retained  online/offline, model, update state (last will: offline)
    {p}/devices/{device}/metrics           QoS 1     metric batches from the outbox
    {p}/devices/{device}/events            QoS 1     detections, drift alerts, errors
    {p}/devices/{device}/update/status     retained  OTA state machine transitions and progress
    {p}/devices/{device}/samples           QoS 1     captured input samples, uploaded on request
    {p}/devices/{device}/samples/upload    QoS 1     resumable chunked sample uploads (offer + chunks)
    {p}/devices/{device}/samples/ack       QoS 1     fleet -> device: which chunks of a sample landed
    {p}/devices/{device}/desired           retained  signed desired-model document (fleet -> device)
    {p}/devices/{device}/commands          QoS 1     fleet -> device requests (upload samples, rollback)
    {p}/devices/{device}/feedback          QoS 1     fleet -> device signed labels for predictions (field accuracy)
    {p}/groups/{group}/desired             retained  signed desired-model document for a group
    {p}/groups/{group}/policy              retained  signed collection policy for a group
    {p}/fleet/policy                       retained  signed collection policy for every device
    {p}/packages/{package_id}/meta         retained  chunk count, chunk size, sha256 of the archive
    {p}/packages/{package_id}/chunks/{i}   retained  one chunk of the package archive (binary)

A device may write only below its own ``{p}/devices/{device}/`` (see deploy/mosquitto/acl); the fleet writes the
desired, commands, feedback and packages topics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_segment(value: str, what: str) -> str:
    """Ids become topic levels: no wildcards, slashes or empty levels."""
    if not _SEGMENT.match(value):
        raise ValueError(f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-'")
    return value


@dataclass(frozen=True)
class Topics:
    prefix: str = "edge"

    def __post_init__(self) -> None:
        for part in self.prefix.split("/"):
            check_segment(part, "topic prefix level")

    def device(self, device: str) -> str:
        return f"{self.prefix}/devices/{check_segment(device, 'device id')}"

    def state(self, device: str) -> str:
        return f"{self.device(device)}/state"

    def metrics(self, device: str) -> str:
        return f"{self.device(device)}/metrics"

    def events(self, device: str) -> str:
        return f"{self.device(device)}/events"

    def samples(self, device: str) -> str:
        return f"{self.device(device)}/samples"

    def sample_upload(self, device: str) -> str:
        return f"{self.device(device)}/samples/upload"

    def sample_ack(self, device: str) -> str:
        return f"{self.device(device)}/samples/ack"

    def fleet_policy(self) -> str:
        return f"{self.prefix}/fleet/policy"

    def group_policy(self, group: str) -> str:
        return f"{self.prefix}/groups/{check_segment(group, 'group')}/policy"

    def update_status(self, device: str) -> str:
        return f"{self.device(device)}/update/status"

    def desired(self, device: str) -> str:
        return f"{self.device(device)}/desired"

    def commands(self, device: str) -> str:
        return f"{self.device(device)}/commands"

    def feedback(self, device: str) -> str:
        return f"{self.device(device)}/feedback"

    def group_desired(self, group: str) -> str:
        return f"{self.prefix}/groups/{check_segment(group, 'group')}/desired"

    def package_meta(self, package_id: str) -> str:
        return f"{self.prefix}/packages/{check_segment(package_id, 'package id')}/meta"

    def package_chunk(self, package_id: str, index: int) -> str:
        return f"{self.prefix}/packages/{check_segment(package_id, 'package id')}/chunks/{int(index)}"

    def all_device_states(self) -> str:
        return f"{self.prefix}/devices/+/state"

    def all_update_status(self) -> str:
        return f"{self.prefix}/devices/+/update/status"

    def all_device_desired(self) -> str:
        return f"{self.prefix}/devices/+/desired"

    def all_metrics(self) -> str:
        return f"{self.prefix}/devices/+/metrics"

    def all_events(self) -> str:
        return f"{self.prefix}/devices/+/events"

    @staticmethod
    def device_from(topic: str) -> str | None:
        parts = topic.split("/")
        try:
            return parts[parts.index("devices") + 1]
        except (ValueError, IndexError):
            return None
