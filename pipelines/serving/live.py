"""The service's side of the real-time stream (pipelines/feedback/stream.py, live_state.py).

Intake: POST /events and /feedback check events against the raw contract, pseudonymize user ids with the
pipeline's key and publish them to the Redis Stream, which `shopfusion stream run` applies to the live state.
Reads: /recommend adds a user's fresh events (live_state's recent history) to the bundle's history.
Both go through a Circuit: with Redis unreachable the service answers from the bundle alone, says so in the
answer's notes, and counts it; never a 5xx. Without SHOPFUSION_REDIS_URL there is no stream: /events answers
503 and /recommend reads the bundle alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.core.params import StreamParams
from pipelines.feedback.live_state import LiveState
from pipelines.feedback.stream import StreamNames, check_events, pseudonymize_events, publish
from pipelines.serving.cache import SharedRedis

LIVE_UNAVAILABLE = "live state unavailable: answered from the bundle's history alone"


class StreamUnavailable(RuntimeError):
    """The stream cannot take events now (not configured, or Redis unreachable): 503, the producer retries."""


@dataclass
class Intake:
    accepted: int
    errors: list[dict]  # [{"row", "field", "msg"}]: the batch is refused as a whole when any row is bad


class Live:
    """Publishing to the stream and reading the live state. Reads on the request path go through the worker's
    short-timeout client and circuit (`redis`); what no answer waits on (intake, the follower's reads) through
    `intake`, a client with stream.intake_timeout_ms and a circuit of its own: on a saturated machine a read
    past its 20 ms is no outage, and must not refuse the producers' events for the circuit's retry time."""

    def __init__(self, redis: SharedRedis, params: StreamParams, session_gap_seconds: int, key: bytes | None,
                 intake: SharedRedis | None = None):
        self.params, self.key = params, key
        self.client, self.circuit = redis.client, redis.circuit
        self.intake_redis = intake or redis
        self.intake_client, self.intake_circuit = self.intake_redis.client, self.intake_redis.circuit
        self.names = StreamNames.from_prefix(params.prefix)
        self.state = LiveState.from_params(self.client, self.names.state_prefix, params, session_gap_seconds)
        self.background_state = LiveState.from_params(self.intake_client, self.names.state_prefix, params,
                                                      session_gap_seconds)

    def recent_events(self, user: str | None) -> list[tuple[str, str]] | None:
        """The user's fresh (item id, event type), oldest first (what a history reads); None when the live state is
        unreachable."""
        if not user:
            return []
        events = self.circuit.call(lambda: self.state.recent_history(user), None)
        return None if events is None else [(event["item_id"], event["event_type"]) for event in reversed(events)]

    def popularity_since(self, event_weights: dict[str, float], since: float) -> dict[str, float]:
        """Item id -> the weighted count of its events since `since` (the popularity's event weights)."""
        totals = self.background_state.item_totals_since(list(event_weights), since)
        scores: dict[str, float] = {}
        for event_type, counts in totals.items():
            for item_id, count in counts.items():
                scores[item_id] = scores.get(item_id, 0.0) + event_weights[event_type] * count
        return scores

    def intake(self, rows: list[dict]) -> Intake:
        """Check a batch, pseudonymize it and publish it; a bad row refuses the batch (nothing half-published)."""
        events, errors = check_events(rows)
        if errors:
            return Intake(0, errors)
        if self.key is None:
            raise StreamUnavailable("no pipeline key to pseudonymize user ids (privacy.key_env / key_file)")
        published = self.intake_circuit.call(
            lambda: publish(self.intake_client, self.names, pseudonymize_events(events, self.key), self.params.maxlen),
            None)
        if published is None:
            raise StreamUnavailable("the event stream is unreachable; retry later")
        return Intake(len(published), [])

    def publish_feedback(self, event: dict) -> bool:
        """A /feedback event, already pseudonymized, into the stream; False when Redis is unreachable (the durable
        feedback log still holds it)."""
        return self.intake_circuit.call(lambda: bool(publish(self.intake_client, self.names, [event], self.params.maxlen)),
                                 False)

