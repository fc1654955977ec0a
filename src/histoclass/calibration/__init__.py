"""Calibration: temperature scaling (confidences that mean what they say) and conformal prediction sets
(a set of classes that holds the true one with a chosen probability). Numpy and SciPy only."""
