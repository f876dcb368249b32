"""What every volume driver shares: names, options, mount counts and the stateful base."""
