"""Over-the-air model updates: signed desired documents, chunked transfer, A/B slots, health-gated swap."""

from edge_runtime.update.states import TRANSITIONS, Event, State, next_state

__all__ = ["TRANSITIONS", "Event", "State", "next_state"]
