"""The package version, kept low so a checkpoint can record it without importing the top."""

VERSION = "0.1.0"  # also pyproject.toml's
