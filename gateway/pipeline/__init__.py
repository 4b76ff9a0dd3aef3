"""The source stage and fan-out: dedup, tracking plans, transformations, filters, FQL."""
