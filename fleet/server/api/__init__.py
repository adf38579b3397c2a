"""REST API under /api/v1: one router per resource, thin over fleet.server.db.queries and actions."""

from __future__ import annotations

from fastapi import APIRouter

from fleet.server.api import actions, devices, packages, records, registry, retrain, rollouts

router = APIRouter(prefix="/api/v1")
router.include_router(devices.router)
router.include_router(records.router)
router.include_router(actions.router)
router.include_router(registry.router)
router.include_router(rollouts.router)
router.include_router(packages.router)
router.include_router(retrain.router)
