"""The systems `tests.bench.run` measures: one module each, with the interface of `base.Peer`."""
