"""A person's digits classified by a model loaded by URI (the registered champion by default):
files read as a person has them, MNIST's own normalisation, batches and numbers."""
