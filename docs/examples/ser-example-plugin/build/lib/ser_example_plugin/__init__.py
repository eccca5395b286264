"""An example third-party ser-plugins distribution."""
