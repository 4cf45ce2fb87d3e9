"""Tests of bifamily.checkpoint."""
