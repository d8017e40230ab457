"""Repository tooling, kept apart from the product and never imported by it: ``make bench``
and ``make quality``, the step-time profiler, the demo and recorded corpus builders."""
