"""Tests of bifamily.evaluation."""
