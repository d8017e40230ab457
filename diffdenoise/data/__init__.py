"""Data: audio I/O; sharding a folder into tar shards with a manifest, and reading them
back by offset; the training and validation pipelines; noise plans made in the loader
and rendered (noise, rooms, mixing at an SNR) on the device."""
