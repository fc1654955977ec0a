"""Prediction: records -> per-image predictions, their CSV and reports; the predict verb's job."""
