"""Proving tiers equal: the equivalence contract (:mod:`.equivalence`), the one harness that builds a tier
beside its float64 reference and compares their passes (:mod:`.harness`), and ``poolbench check``'s
grid of cases and gradchecks (:mod:`.check`)."""
