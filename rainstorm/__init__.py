"""RainStorm: exactly-once stream processing. A job file imports its operators from here."""

from rainstorm.stream.operators import AggregateByKey, FilteredTransform, Transform, args

__all__ = ["AggregateByKey", "FilteredTransform", "Transform", "args"]
