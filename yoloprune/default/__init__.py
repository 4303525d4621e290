"""The embedded default problem (synthetic shapes data, bundled weights) and the demo that runs on it."""
