"""Label-free warnings that images are unlike a model's training data: a shift score per image, a
verdict per batch."""

from histoclass.shift.reference import ShiftReference, fit_reference
from histoclass.shift.verdict import shift_verdict

__all__ = ["ShiftReference", "fit_reference", "shift_verdict"]
