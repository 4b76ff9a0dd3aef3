"""HTTP ingress: Segment's ``/v1`` API and the SegOps-style ``/api/ingestion`` API."""

from gateway.ingress.common import IngressState, json_response, make_error_middleware
from gateway.ingress.segment import add_segment_routes
from gateway.ingress.segops import add_segops_routes

__all__ = [
    "IngressState",
    "add_segment_routes",
    "add_segops_routes",
    "json_response",
    "make_error_middleware",
]
