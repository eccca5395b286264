"""The plugin boundary: the registry of entry points, the contracts, the boundary checks, the probes, fingerprints."""
