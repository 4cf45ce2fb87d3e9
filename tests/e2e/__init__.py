"""End-to-end tests: the command line, whole runs, the shipped recipes and the documentation site."""
