"""Tests of bifamily.checkpoint, one module per module: files, snapshot, resume, manager."""
