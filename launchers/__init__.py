"""Built-in launchers (registered in setup.cfg under ``ser_plugins.launchers``, like third-party ones)."""
