"""The reference architecture: typology, configs, registry, targeting, attaching and the adapted model."""
