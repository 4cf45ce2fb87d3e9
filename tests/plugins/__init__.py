"""Tests of the built-in plugins (plugins/bifamily_*)."""
