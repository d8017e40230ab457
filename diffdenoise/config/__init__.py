"""Configuration: the typed schema (every key, its default and range) and the loading of
YAML layers and dotted overrides into one validated, read-only config."""
