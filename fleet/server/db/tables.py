"""The fleet server's schema: every table in one module (SQLAlchemy 2 Core), the same on SQLite and PostgreSQL.

Changes go through an Alembic revision in ``migrations/versions`` (the initial one creates exactly these tables).
Record keys make ingest idempotent: a device's outbox record is ``(device, outbox epoch, record id)``; QoS 1
redelivers, so every insert is ``ON CONFLICT DO NOTHING`` on that key.

Room is left for later issues: the model registry and rollouts (issue 15) and labels and re-training runs
(issue 16) add their own tables in their own revisions; ``samples`` already carries a ``label`` column.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s",
})

DEVICE = String(128)  # topic segments are at most 128 characters (edge_runtime.sync.topics)

# One row per device: the latest retained state, update status and desired document, merged.
devices = Table(
    "devices", metadata,
    Column("id", DEVICE, primary_key=True),
    Column("first_seen", Float, nullable=False, comment="unix time the server first heard of it"),
    Column("last_seen", Float, nullable=False, comment="unix time of the latest message from it"),
    Column("online", Boolean, nullable=False, default=False),
    Column("model", String(128)), Column("version", String(64)), Column("serving", String(200)),
    Column("profile", String(128)), Column("groups", JSON, comment="list of group names"),
    Column("update_state", String(32)), Column("update_reason", Text), Column("update_at", Float),
    Column("desired_version", String(64)), Column("desired_sequence", BigInteger),
    Column("desired_scope", String(16), comment="device: it follows its own desired document; null: its groups'"),
    Column("drifting", Boolean, nullable=False, default=False, comment="latest drift event not yet cleared"),
    Column("drift_at", Float),
    Column("state", JSON, comment="the latest retained state document"),
)

def _key() -> list[Column]:
    """The record key: (device, outbox epoch, record id), as the device's forwarder numbers records."""
    return [Column("device", DEVICE, primary_key=True), Column("outbox", String(64), primary_key=True),
            Column("record_id", BigInteger, primary_key=True)]


# Metric records (one per device period), with the figures the dashboard charts pulled out of the JSON.
metrics = Table(
    "metrics", metadata, *_key(),
    Column("ts", Float, nullable=False), Column("received", Float, nullable=False),
    Column("model", String(128)), Column("version", String(64)),
    Column("frames", Integer), Column("fps", Float),
    Column("latency_p50", Float), Column("latency_p90", Float), Column("latency_p99", Float),
    Column("inference_p50", Float), Column("dropped", Integer), Column("errors", Integer),
    Column("cpu_percent", Float), Column("rss_bytes", BigInteger), Column("temperature_c", Float),
    Column("confidence_mean", Float), Column("drift_max", Float),
    Column("data", JSON, nullable=False),
)
Index("ix_metrics_ts", metrics.c.ts)
Index("ix_metrics_device_ts", metrics.c.device, metrics.c.ts)

events = Table(
    "events", metadata, *_key(),
    Column("ts", Float, nullable=False), Column("received", Float, nullable=False),
    Column("type", String(64), nullable=False), Column("model", String(128)), Column("version", String(64)),
    Column("feature", String(128)),
    Column("data", JSON, nullable=False),
)
Index("ix_events_ts", events.c.ts)
Index("ix_events_device_ts", events.c.device, events.c.ts)
Index("ix_events_type_ts", events.c.type, events.c.ts)

# Every distinct retained update status a device published (a retained repeat is the same (device, at, state)).
update_history = Table(
    "update_history", metadata,
    Column("device", DEVICE, primary_key=True), Column("at", Float, primary_key=True),
    Column("state", String(32), primary_key=True),
    Column("sequence", BigInteger), Column("serving", String(200)), Column("target_version", String(64)),
    Column("reason", Text), Column("code", String(64)), Column("data", JSON, nullable=False),
)

# Uploaded samples: metadata here, content on disk under its sha256 (content-addressed, deduplicated).
samples = Table(
    "samples", metadata,
    Column("device", DEVICE, primary_key=True), Column("sample_id", String(128), primary_key=True),
    Column("ts", Float), Column("received", Float, nullable=False),
    Column("sha256", String(64), nullable=False), Column("bytes", Integer, nullable=False),
    Column("ext", String(16), nullable=False), Column("reason", String(64)), Column("confidence", Float),
    Column("label", String(128), comment="set by a person or a teacher model (issue 16)"),
    Column("meta", JSON, nullable=False),
)
Index("ix_samples_received", samples.c.received)

# Payloads that failed validation: counted and kept aside (bounded by retention), never stopping ingest.
rejected = Table(
    "rejected", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received", Float, nullable=False), Column("topic", String(400), nullable=False),
    Column("reason", Text, nullable=False), Column("payload", LargeBinary, nullable=False),
)

# Rollups: per device and version, one row per bucket (1 minute, 1 hour); raw metrics expire sooner.
def _rollup(name: str) -> Table:
    return Table(
        name, metadata,
        Column("device", DEVICE, primary_key=True), Column("bucket", Float, primary_key=True),
        Column("version", String(64), primary_key=True),
        Column("n", Integer, nullable=False), Column("frames", BigInteger, nullable=False),
        Column("fps", Float), Column("latency_p50", Float), Column("latency_p99", Float),
        Column("errors", BigInteger), Column("dropped", BigInteger), Column("cpu_percent", Float),
        Column("temperature_c", Float), Column("confidence_mean", Float), Column("drift_max", Float),
    )


rollup_1m = _rollup("rollup_1m")
rollup_1h = _rollup("rollup_1h")
Index("ix_rollup_1h_bucket", rollup_1h.c.bucket)
Index("ix_rollup_1m_bucket", rollup_1m.c.bucket)

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", String(256), nullable=False, comment="scrypt$n$r$p$salt$hash"),
    Column("role", String(16), nullable=False, comment="viewer or operator"),
    Column("created", Float, nullable=False),
)

tokens = Table(
    "tokens", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False, comment="api (bearer token) or session (browser cookie)"),
    Column("name", String(128)), Column("token_hash", String(64), nullable=False, unique=True),
    Column("csrf", String(64), comment="session tokens: the form token every browser action must carry"),
    Column("created", Float, nullable=False), Column("expires", Float),
)

audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False), Column("user", String(64), nullable=False),
    Column("action", String(64), nullable=False), Column("target", String(200)),
    Column("outcome", String(16), nullable=False), Column("detail", JSON),
)
Index("ix_audit_ts", audit.c.ts)

# The model registry (issue 15): one row per registered package version, its lineage, and the aliases pointing at
# versions. The archive itself lives on disk under its sha256 (``data_dir/packages``).
model_versions = Table(
    "model_versions", metadata,
    Column("name", String(64), primary_key=True), Column("version", String(64), primary_key=True),
    Column("sha256", String(64), nullable=False), Column("size", BigInteger, nullable=False),
    Column("package_id", String(64), nullable=False), Column("profile", String(128), nullable=False),
    Column("format", String(16), nullable=False), Column("signer", String(64), comment="signing key id"),
    Column("registered_by", String(64), nullable=False), Column("registered", Float, nullable=False),
    Column("parent", String(64), comment="parent version of the same model"),
    Column("lineage", JSON, nullable=False, comment="source, calibration/validation digests, recipe, tools, git"),
    Column("meta", JSON, nullable=False, comment="the package-meta/1 chunk document devices download by"),
)

model_aliases = Table(
    "model_aliases", metadata,
    Column("name", String(64), primary_key=True), Column("alias", String(64), primary_key=True),
    Column("version", String(64), nullable=False), Column("target", String(200), comment="device or group:NAME"),
    Column("moved_by", String(64), nullable=False), Column("moved", Float, nullable=False),
)

# Every alias move, oldest first: what revert walks back along.
alias_history = Table(
    "alias_history", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False), Column("alias", String(64), nullable=False),
    Column("version", String(64), nullable=False), Column("previous", String(64)),
    Column("target", String(200)), Column("user", String(64), nullable=False), Column("ts", Float, nullable=False),
    Column("action", String(16), nullable=False, comment="promote, revert or move"),
    Column("state", String(16), comment="publishing, published, moved (no target) or failed; null: before 0003"),
    Column("error", Text),
)
Index("ix_alias_history_name_alias", alias_history.c.name, alias_history.c.alias)

# Rollouts as server-side jobs (fleet.server.rollouts): the job row holds the state machine's state; every
# transition and verdict (with the figures it used) is a row in rollout_steps.
rollouts = Table(
    "rollouts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False), Column("version", String(64), nullable=False),
    Column("from_version", String(64), nullable=False), Column("target", String(200), nullable=False),
    Column("canaries", JSON, nullable=False), Column("waves", JSON, nullable=False, comment="list of device lists"),
    Column("plan", JSON, nullable=False, comment="window, timeouts and thresholds"),
    Column("state", String(16), nullable=False), Column("stage", Integer, nullable=False, default=0),
    Column("acted", Boolean, nullable=False, default=False, comment="the current state's entry action was done"),
    Column("resume_state", String(16)), Column("stage_started", Float, nullable=False),
    Column("created_by", String(64), nullable=False), Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False), Column("reason", Text),
)
Index("ix_rollouts_state", rollouts.c.state)

rollout_steps = Table(
    "rollout_steps", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rollout_id", Integer, ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False),
    Column("ts", Float, nullable=False), Column("user", String(64), nullable=False),
    Column("event", String(32), nullable=False), Column("from_state", String(16), nullable=False),
    Column("to_state", String(16), nullable=False), Column("figures", JSON),
)
Index("ix_rollout_steps_rollout", rollout_steps.c.rollout_id)

# One row per model, locked (UPDATE) first by every registry write that must not interleave with another on the
# same model: alias moves and rollout creation (fleet.server.registry.lock_model).
model_locks = Table(
    "model_locks", metadata,
    Column("name", String(64), primary_key=True), Column("since", Float, nullable=False),
)

# Per-device credentials for package downloads over HTTP(S) (fleet.server.device_auth): only the token's sha256.
device_credentials = Table(
    "device_credentials", metadata,
    Column("device", DEVICE, primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created", Float, nullable=False), Column("created_by", String(64), nullable=False),
)

# Which targets were sent which package (by sha256): a device may download only what it or its group was given.
package_grants = Table(
    "package_grants", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("target", String(200), primary_key=True, comment="device id or group:NAME"),
    Column("granted", Float, nullable=False),
)

# Labels (issue 16): one row per (sample, origin). A person's label wins over an import's, an import's over a
# teacher model's; ``fleet.retrain.labels.effective`` applies that order, so origins are never mixed silently.
sample_labels = Table(
    "sample_labels", metadata,
    Column("device", DEVICE, primary_key=True), Column("sample_id", String(128), primary_key=True),
    Column("origin", String(16), primary_key=True, comment="person, import or teacher"),
    Column("label", String(128), nullable=False),
    Column("confidence", Float, comment="teacher labels: the teacher model's probability"),
    Column("boxes", JSON, comment="detection: [[class, x0, y0, x1, y1] normalised], or null"),
    Column("by", String(64), nullable=False, comment="user, import file or teacher model digest"),
    Column("at", Float, nullable=False),
)
Index("ix_sample_labels_at", sample_labels.c.at)

# Re-training runs as server-side jobs (fleet.retrain.runs): the row holds the state machine's state; every
# transition is a row in retrain_steps with the figures it used. Dataset snapshots are content-addressed.
retrain_runs = Table(
    "retrain_runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(64), nullable=False), Column("parent", String(64), nullable=False),
    Column("state", String(24), nullable=False),
    Column("reasons", JSON, nullable=False, comment="why it started: each trigger with its figures"),
    Column("policy", JSON, nullable=False, comment="the retrain.yaml it runs under"),
    Column("snapshot", String(64), comment="dataset snapshot id (sha256)"),
    Column("candidate", String(64), comment="the version it registered"),
    Column("rollout_id", Integer), Column("attempt", Integer, nullable=False, default=0),
    Column("pid", Integer, comment="local training process (its own process group)"),
    Column("worker", String(128), comment="remote worker that claimed the training"),
    Column("claimed", Float), Column("created_by", String(64), nullable=False),
    Column("created", Float, nullable=False), Column("updated", Float, nullable=False),
    Column("stage_started", Float, nullable=False), Column("reason", Text, comment="why it failed or stopped"),
    Column("gates", JSON, comment="every gate with its figures"),
)
Index("ix_retrain_runs_state", retrain_runs.c.state)

retrain_steps = Table(
    "retrain_steps", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("retrain_runs.id", ondelete="CASCADE"), nullable=False),
    Column("ts", Float, nullable=False), Column("user", String(64), nullable=False),
    Column("event", String(32), nullable=False), Column("from_state", String(24), nullable=False),
    Column("to_state", String(24), nullable=False), Column("figures", JSON),
)
Index("ix_retrain_steps_run", retrain_steps.c.run_id)

dataset_snapshots = Table(
    "dataset_snapshots", metadata,
    Column("id", String(64), primary_key=True, comment="sha256 of the canonical sample ids, labels and base"),
    Column("model", String(64), nullable=False), Column("created", Float, nullable=False),
    Column("samples", JSON, nullable=False, comment="[[device, sample_id, label, origin, split]] sorted"),
    Column("base", JSON, comment="the parent's training data reference: path and sha256"),
    Column("counts", JSON, nullable=False),
)
