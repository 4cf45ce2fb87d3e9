"""What several test modules share: small recipes, fake data files, process helpers."""
