"""Reference networks (the LeNets, the tutorial net, WRN-16-4), data sets (MNIST, CIFAR-10)
and the import of a user's own model and data functions by reference."""
