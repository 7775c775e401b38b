"""Selection algorithms as plain numpy functions, without the plugin machinery (the plugins wrap them)."""
