"""Unit tests of the bifamily package, one module per module where they fit."""
