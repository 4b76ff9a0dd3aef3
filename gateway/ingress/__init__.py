"""HTTP ingress: Segment's ``/v1`` API and the SegOps-style ``/api/ingestion`` API."""

from gateway.ingress.common import IngressState, add_json_fallback, json_errors, json_response
from gateway.ingress.segment import add_segment_routes
from gateway.ingress.segops import add_segops_routes

__all__ = [
    "IngressState",
    "add_json_fallback",
    "add_segment_routes",
    "add_segops_routes",
    "json_errors",
    "json_response",
]
