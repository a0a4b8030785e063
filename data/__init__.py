"""Readers for image collections: Omniglot, Lake's runs, generic galleries, MNIST, synthetic alphabets."""
