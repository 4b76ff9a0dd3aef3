"""Tests for gateway/pipeline/destination_stage.py: one destination's routing controls."""

from __future__ import annotations

from gateway.pipeline.destination_stage import DestinationStage
from gateway.pipeline.filters import DestinationFilterConfig, DestinationFilters
from gateway.pipeline.transforms import TransformationConfig, Transformations
from gateway.testing import make_event


def test_untouched_events_are_not_even_decoded() -> None:
    """With no rules, no suppressions and no integrations object, events pass as they are."""
    events = [make_event(1), make_event(2)]
    kept, left_out = DestinationStage("hook").apply(events)
    assert kept == events
    assert not left_out
    assert all(event._message is None for event in events)


def test_suppressed_users_are_left_out_everywhere() -> None:
    """Events of a user suppressed after they were accepted reach no destination, not even an
    archive, and are counted under the suppression rule."""
    events = [make_event(1, userId="gone"), make_event(2, userId="kept")]
    for kind in ("destination", "archive"):
        stage = DestinationStage("d", kind=kind, suppressed=lambda: frozenset({"gone"}))
        kept, left_out = stage.apply(events)
        assert [e.message_id for e in kept] == ["web-00000002"]
        assert left_out == {("web", "suppression", "suppressed"): 1}


def test_integrations_filters_and_transformations_in_order() -> None:
    """integrations, then filters, then transformations; changes and errors are counted."""
    filters = DestinationFilters.compile(
        [
            DestinationFilterConfig.model_validate(
                {"name": "no-b", "if": "event = 'B'", "drop": True}
            ),
            DestinationFilterConfig.model_validate(
                {"name": "broken", "if": "lowercase(properties.n) = 'x'", "drop": True}
            ),
        ]
    )
    transformations = Transformations.compile(
        [TransformationConfig.model_validate({"name": "rename", "new_event_name": "Renamed"})]
    )
    stage = DestinationStage("hook", filters=filters, transformations=transformations)
    events = [
        make_event(1, event="A", properties={}),
        make_event(2, event="B", properties={}),
        make_event(3, event="A", properties={}, integrations={"hook": False}),
        make_event(4, event="A", properties={"n": 5}),
    ]
    kept, left_out = stage.apply(events)
    assert [(e.message_id, e.message["event"]) for e in kept] == [("web-00000001", "Renamed")]
    assert left_out == {
        ("web", "integrations", "disabled"): 1,
        ("web", "filter:no-b", "dropped"): 1,
        ("web", "filter:broken", "filter_error"): 1,
        ("web", "transformation:rename", "transformed"): 1,
    }
