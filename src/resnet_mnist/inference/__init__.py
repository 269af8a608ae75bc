"""A person's digits classified by a model loaded by URI (the registered champion by default)."""
