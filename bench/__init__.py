"""Every r1kit benchmark on one harness (timing, JSON, tables): ``r1kit bench ...``."""
