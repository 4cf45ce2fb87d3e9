"""What several test modules share: a tiny model recipe, fake MNIST files, checkpoint helpers, process
helpers and the rank function of the distributed tests."""
