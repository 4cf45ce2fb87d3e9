"""Tests of bifamily.testing, the contract checks plugin authors run."""
