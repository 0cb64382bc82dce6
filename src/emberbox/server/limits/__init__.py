"""Admission limits: per-key request rate and node resource accounting."""
