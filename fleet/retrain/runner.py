"""The re-training runner in `fleet serve`: each tick starts runs whose triggers hold, then does the work of every
active run's state and makes its transition. Training runs in a child process (or on a remote worker) while the
runner goes on; after a restart a run found in ``training`` without its process here is started again."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from sqlalchemy import desc, select, update

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.package import load_private_key
from edge_runtime.package.signing import RELEASE, TrustStore
from fleet.retrain import RetrainError, training, triggers
from fleet.retrain import gates as gt
from fleet.retrain import runs as rr
from fleet.retrain import snapshot as snap
from fleet.retrain.policy import RetrainPolicy
from fleet.retrain.runs import S
from fleet.server import registry as reg
from fleet.server import rollouts as ro
from fleet.server.auth import User, audit
from fleet.server.db import tables as t
from fleet.server.errors import ActionRefused, NotRegistered, RegistryError
from fleet.server.ticker import Ticker

log = logging.getLogger(__name__)


class RetrainRunner(Ticker):
    """Background job of the fleet server (``policies``: model name -> its retrain.yaml)."""

    name, join_s = "retrain", 30.0

    def __init__(self, engine: Any, actions: Any, data_dir: Path, policies: dict[str, RetrainPolicy],
                 operator_key: Path | None = None, tick_s: float = 0.5) -> None:
        super().__init__(tick_s)
        self.engine, self.actions, self.data_dir, self.policies = engine, actions, data_dir, policies
        self.operator_key = operator_key
        self.jobs: dict[int, training.Job] = {}

    def run_dir(self, rid: int) -> training.RunDir:
        return training.RunDir(self.data_dir / "retrain" / "runs" / str(rid))

    def tick(self) -> None:
        for pol in self.policies.values():
            self._maybe_start(pol)
        active = [s.value for s in S if s not in rr.FINAL and s != S.AWAITING_APPROVAL]
        with self.engine.connect() as conn:
            ids = [r.id for r in conn.execute(select(t.retrain_runs.c.id).where(t.retrain_runs.c.state.in_(active))
                                              .order_by(t.retrain_runs.c.id))]
        for rid in ids:
            try:
                self.advance(rid)
            except (RegistryError, ActionRefused, EdgeRuntimeError, OSError, ValueError) as exc:
                self._fail(rid, f"{type(exc).__name__}: {exc}")

    def by_hand(self, user: User, model: str, note: str | None = None) -> dict[str, Any]:
        """Start a run now (operator), under the server's policy for ``model``; audited."""
        if not user.is_operator:
            raise PermissionError("operator role required")
        pol = self.policies.get(model)
        if pol is None:
            raise NotRegistered(f"no retrain policy for model {model!r} on this server (fleet serve --retrain)")
        with self.engine.connect() as conn:
            parent = triggers.parent_version(conn, model)
        if parent is None:
            raise NotRegistered(f"{model} has no registered version to re-train")
        try:
            rid = rr.create(self.engine, user.name, pol, parent, [{"trigger": "by_hand", "user": user.name,
                                                                   "note": note}])
        except RetrainError as exc:
            audit(self.engine, user.name, "retrain_run", model, "refused", {"reason": str(exc)})
            raise
        audit(self.engine, user.name, "retrain_run", model, "done", {"run": rid})
        return {"id": rid, "state": S.QUEUED.value, "parent": parent}

    def _maybe_start(self, pol: RetrainPolicy) -> None:
        with self.engine.connect() as conn:
            reasons, new = triggers.evaluate(conn, pol)
            parent = triggers.parent_version(conn, pol.model) if reasons else None
        if reasons and parent is not None:
            try:
                rid = rr.create(self.engine, "retrain:trigger", pol, parent, reasons)
            except RetrainError:
                return  # a run of the model is going already
            log.info("retrain run %s of %s started: %s (%s new labels)", rid, pol.model, reasons, new)

    def _fail(self, rid: int, why: str) -> None:
        log.warning("retrain run %s: %s", rid, why)
        with self.engine.begin() as conn:
            run = rr.get_run(conn, rid)
            if S(run.state) not in rr.FINAL:
                training.kill_group(run.pid)
                rr.transition(conn, run, "fail", f"retrain:{rid}", {"reason": why}, reason=why[:4000])

    def _move(self, run: Any, event: str, figures: dict[str, Any] | None = None, **values: Any) -> None:
        with self.engine.begin() as conn:
            try:
                rr.transition(conn, rr.get_run(conn, run.id), event, f"retrain:{run.id}", figures, **values)
            except RetrainError as exc:  # an operator cancelled it meanwhile
                log.info("retrain run %s: %s", run.id, exc)

    # ------------------------------------------------------------------------------------------------ states
    def advance(self, rid: int) -> None:
        with self.engine.connect() as conn:
            run = rr.get_run(conn, rid)
        state = S(run.state)
        if state == S.QUEUED:
            self._move(run, "start")
        elif state == S.SNAPSHOT:
            self._snapshot(run)
        elif state == S.TRAINING:
            self._training(run)
        elif state == S.CONVERTING:
            self._convert(run)
        elif state == S.GATING:
            self._gate(run)
        elif state == S.REGISTERING:
            self._register(run)
        elif state == S.CANARY:
            self._canary(run)

    def policy(self, run: Any) -> RetrainPolicy:
        return RetrainPolicy.model_validate(run.policy)

    def parent_row(self, run: Any) -> Any:
        with self.engine.connect() as conn:
            return reg.get_version(conn, run.model, run.parent)

    def parent_package(self, run: Any) -> Path:
        return reg.package_path(self.data_dir, self.parent_row(run).sha256)

    def sign_key(self, pol: RetrainPolicy) -> Path:
        path = pol.sign_key or self.operator_key
        if path is None:
            raise RetrainError("no key to sign the candidate with (policy sign_key or fleet serve --operator-key)")
        return Path(path)

    def trust(self, pol: RetrainPolicy) -> TrustStore:
        """The candidate is checked against the key it was signed with (the parent was checked at registration)."""
        return TrustStore.from_keys([load_private_key(self.sign_key(pol)).public_key()], [RELEASE])

    def parent_source(self, run: Any, pol: RetrainPolicy) -> Path:
        """The source model the parent came from: the model its own run trained, else the policy's first one."""
        with self.engine.connect() as conn:
            made = conn.execute(select(t.retrain_runs.c.id).where(t.retrain_runs.c.model == run.model,
                                                                 t.retrain_runs.c.candidate == run.parent)
                                .order_by(desc(t.retrain_runs.c.id)).limit(1)).first()
        if made is not None:
            path = self.run_dir(made.id).output(pol.training.source_model.suffix)
            if path.is_file():
                return path
        return pol.training.source_model

    def _snapshot(self, run: Any) -> None:
        from edge_runtime.api import load

        pol, rd = self.policy(run), self.run_dir(run.id)
        with load(self.parent_package(run), allow_unsigned=True) as parent:
            classes = gt.class_names(parent)
            s = snap.select_samples(self.engine, run.model, classes, pol.gates.field_share, pol.use_teacher_labels,
                                    pol.training.base_data)
            wrote = snap.write_train(rd.data, parent, classes, s, self.data_dir / "samples")
        snap.persist(self.engine, run.model, s)
        src = self.parent_source(run, pol)
        shutil.copyfile(src, rd.parent_model(src.suffix))
        self._move(run, "snapshot_done", {"snapshot": s.id, **s.counts, **wrote, "parent_model": str(src)},
                   snapshot=s.id)

    def _training(self, run: Any) -> None:
        pol = self.policy(run)
        if pol.training.where == "worker":
            if run.worker is not None and run.claimed is not None and \
                    time.time() - run.claimed > pol.training.timeout_s:
                raise RetrainError(f"worker {run.worker} did not report within {pol.training.timeout_s} s")
            return
        job = self.jobs.get(run.id)
        if job is None:
            if run.pid is not None:  # started by an earlier server process: end it and start again
                training.kill_group(run.pid)
                self._move(run, "restart", {"attempt": run.attempt + 1, "killed_pid": run.pid}, pid=None)
                with self.engine.connect() as conn:
                    run = rr.get_run(conn, run.id)
            self._launch(run, pol)
            return
        if not job.done.is_set():
            return
        self.jobs.pop(run.id, None)
        self.finish_training(run, job.rc, job.timed_out)

    def _launch(self, run: Any, pol: RetrainPolicy) -> None:
        suffix = pol.training.source_model.suffix
        job = training.start(pol.training.command, self.run_dir(run.id), suffix, pol.training.timeout_s,
                             pol.training.cwd, run.attempt + 1)
        self.jobs[run.id] = job
        with self.engine.begin() as conn:
            conn.execute(update(t.retrain_runs).where(t.retrain_runs.c.id == run.id)
                         .values(pid=job.proc.pid, attempt=run.attempt + 1))

    def finish_training(self, run: Any, rc: int | None, timed_out: bool = False) -> None:
        pol, rd = self.policy(run), self.run_dir(run.id)
        out = rd.output(pol.training.source_model.suffix)
        if timed_out:
            raise RetrainError(f"the training command ran past {pol.training.timeout_s} s and was killed")
        if rc != 0:
            raise RetrainError(f"the training command exited with {rc}: {training.last_lines(rd.log)}")
        if not out.is_file() or out.stat().st_size == 0:
            raise RetrainError(f"the training command wrote no model to {out}")
        secs = time.time() - run.stage_started
        self._move(run, "trained", {"seconds": round(secs, 3), "bytes": out.stat().st_size, "attempt": run.attempt},
                   pid=None)

    def _candidate_version(self, run: Any) -> str:
        major, minor, patch = (run.parent.split("+")[0].split("-")[0].split(".") + ["0", "0"])[:3]
        n = int(patch) if patch.isdigit() else 0
        with self.engine.connect() as conn:
            taken = {r.version for r in conn.execute(select(t.model_versions.c.version)
                                                     .where(t.model_versions.c.name == run.model))}
        while True:
            n += 1
            v = f"{major}.{minor}.{n}"
            if v not in taken:
                return v

    def _convert(self, run: Any) -> None:
        pol, rd = self.policy(run), self.run_dir(run.id)
        recipe = dict(self.parent_row(run).lineage.get("recipe") or {})
        if not recipe:
            raise RetrainError(f"{run.model} {run.parent} has no recorded recipe (a package from `convert` carries "
                               "one; else registry register --recipe)")
        key = self.sign_key(pol)
        calib = self._calibration(run)
        version = self._candidate_version(run)
        archive = rd.root / "candidate.erpkg"
        t0 = time.time()
        gt.convert_candidate(recipe, source=rd.output(pol.training.source_model.suffix), output=rd.root / "candidate",
                             calibration=calib, overrides={**pol.overrides, "version": version, "name": run.model,
                                                           "archive": archive, "sign_key": key})
        self._move(run, "converted", {"version": version, "seconds": round(time.time() - t0, 3),
                                      "calibration": str(calib) if calib else "recipe"}, candidate=version)

    def _calibration(self, run: Any) -> Path | None:
        """The snapshot's training samples as an image folder (the recipe's own data when there are few)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(t.dataset_snapshots).where(t.dataset_snapshots.c.id == run.snapshot)).first()
            shas = {(r.device, r.sample_id): (r.sha256, r.ext) for r in conn.execute(
                select(t.samples.c.device, t.samples.c.sample_id, t.samples.c.sha256, t.samples.c.ext))}
        picked = [shas[(d, s)] for d, s, _l, _o, split in (row.samples if row else []) if split == "train"
                  and (d, s) in shas and shas[(d, s)][1] != "npy"]
        if len(picked) < 8:
            return None
        folder = self.run_dir(run.id).root / "calibration"
        folder.mkdir(parents=True, exist_ok=True)
        for sha, ext in picked:
            src = self.data_dir / "samples" / sha[:2] / f"{sha}.{ext}"
            if src.is_file() and not (folder / src.name).exists():
                shutil.copyfile(src, folder / src.name)
        return folder

    def _gate(self, run: Any) -> None:
        pol, rd = self.policy(run), self.run_dir(run.id)
        with self.engine.connect() as conn:
            row = conn.execute(select(t.dataset_snapshots).where(t.dataset_snapshots.c.id == run.snapshot)).first()
            shas = {(r.device, r.sample_id): (r.sha256, r.ext) for r in conn.execute(
                select(t.samples.c.device, t.samples.c.sample_id, t.samples.c.sha256, t.samples.c.ext))}
        field = [{"sha256": shas[(d, s)][0], "ext": shas[(d, s)][1], "label": lab}
                 for d, s, lab, _o, split in (row.samples if row else []) if split == "field" and (d, s) in shas]
        verdict = gt.run_gates(rd.root / "candidate.erpkg", self.parent_package(run), pol.gates,
                               gt.field_items(self.data_dir / "samples", field), self.trust(pol))
        if verdict["passed"]:
            self._move(run, "passed", verdict, gates=verdict)
        else:
            self._move(run, "gate_failed", verdict, gates=verdict, reason=verdict["reason"])

    def _register(self, run: Any) -> None:
        pol, rd = self.policy(run), self.run_dir(run.id)
        upload = rd.root / "register.erpkg"
        shutil.copyfile(rd.root / "candidate.erpkg", upload)  # register moves its upload into the store
        # the candidate's own recorded recipe (its conversion's provenance) is the lineage's recipe
        extra = reg.LineageExtra(parent=run.parent, training_command=pol.training.command,
                                 dataset_snapshot=run.snapshot)
        doc = reg.register(self.engine, self.data_dir, User(0, f"retrain:{run.id}", "operator"), upload, extra)
        event = "registered_auto" if pol.canary.auto else "registered"
        self._move(run, event, {"version": doc["version"], "sha256": doc["sha256"]})

    def _canary(self, run: Any) -> None:
        if run.rollout_id is None:
            self._start_rollout(run)
            return
        with self.engine.connect() as conn:
            job = ro.get_job(conn, run.rollout_id)
        if job.state == ro.S.DONE.value:
            self._move(run, "promoted", {"rollout": job.id})
        elif job.state in (ro.S.FAILED.value, ro.S.ABORTED.value):
            self._move(run, "rolled_back", {"rollout": job.id, "reason": job.reason}, reason=job.reason)

    def _start_rollout(self, run: Any) -> None:
        pol = self.policy(run)
        with self.engine.connect() as conn:  # adopt a rollout started before a restart
            found = conn.execute(select(t.rollouts.c.id).where(t.rollouts.c.name == run.model,
                                                              t.rollouts.c.version == run.candidate)
                                 .order_by(desc(t.rollouts.c.id)).limit(1)).first()
        if found is not None:
            rid = found.id
        else:
            c = pol.canary
            plan = ro.RolloutPlan(name=run.model, version=run.candidate, target=pol.target, canaries=c.canaries,
                                  canary_percent=c.canary_percent, waves=c.waves, window_s=c.window_s,
                                  timeout_s=c.timeout_s, thresholds=c.thresholds)
            rid = ro.create(self.engine, User(0, f"retrain:{run.id}", "operator"), plan)["id"]
        with self.engine.begin() as conn:
            conn.execute(update(t.retrain_runs).where(t.retrain_runs.c.id == run.id).values(rollout_id=rid))

    def cancel(self, run: Any) -> None:
        """After an operator's cancel: stop its training process, abort its rollout."""
        job = self.jobs.pop(run.id, None)
        training.kill_group(job.proc.pid if job else run.pid)
        if run.rollout_id is not None:
            try:
                ro.operator_event(self.engine, User(0, f"retrain:{run.id}", "operator"), run.rollout_id, "abort")
            except RegistryError as exc:
                log.info("retrain run %s: rollout %s: %s", run.id, run.rollout_id, exc)

    # ------------------------------------------------------------------------------------------------ workers
    def claim(self, worker: str) -> dict[str, Any] | None:
        """Give the oldest unclaimed worker-side training to ``worker`` (atomic: one worker per run)."""
        with self.engine.connect() as conn:
            cands = conn.execute(select(t.retrain_runs).where(t.retrain_runs.c.state == S.TRAINING.value,
                                                              t.retrain_runs.c.worker.is_(None))
                                 .order_by(t.retrain_runs.c.id)).all()
        for run in cands:
            pol = self.policy(run)
            if pol.training.where != "worker":
                continue
            with self.engine.begin() as conn:
                done = conn.execute(update(t.retrain_runs).where(t.retrain_runs.c.id == run.id,
                                                                 t.retrain_runs.c.worker.is_(None),
                                                                 t.retrain_runs.c.state == S.TRAINING.value)
                                    .values(worker=worker[:128], claimed=time.time(), attempt=run.attempt + 1))
            if done.rowcount == 1:
                suffix = pol.training.source_model.suffix
                return {"id": run.id, "model": run.model, "parent": run.parent, "command": pol.training.command,
                        "timeout_s": pol.training.timeout_s, "model_suffix": suffix, "attempt": run.attempt + 1}
        return None

    def worker_result(self, rid: int, worker: str, rc: int, model: Path | None, log_text: bytes) -> dict[str, Any]:
        """A worker's outcome: its log appended to the run's, its model kept, then the transition."""
        with self.engine.connect() as conn:
            run = rr.get_run(conn, rid)
        if S(run.state) != S.TRAINING or run.worker != worker:
            raise RetrainError(f"run {rid} is not being trained by {worker!r} (it is {run.state})")
        pol, rd = self.policy(run), self.run_dir(rid)
        rd.root.mkdir(parents=True, exist_ok=True)
        with rd.log.open("ab") as f:
            f.write(f"--- worker {worker}, attempt {run.attempt}, exit {rc}\n".encode() + log_text[-training.LOG_TAIL:])
        out = rd.output(pol.training.source_model.suffix)
        if model is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            model.replace(out)
        try:
            self.finish_training(run, rc)
        except RetrainError as exc:
            self._fail(rid, str(exc))
        with self.engine.connect() as conn:
            return {"id": rid, "state": rr.get_run(conn, rid).state}
