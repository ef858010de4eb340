"""Classification metrics, the evaluate stage and the report a scientist opens."""
from ..scoring import classification_metrics, confusion_matrix, per_class_table

__all__ = ["classification_metrics", "confusion_matrix", "per_class_table"]
