"""Benchmark loading (VLMEvalKit TSV), answer extraction and scoring rules; pure Python."""
