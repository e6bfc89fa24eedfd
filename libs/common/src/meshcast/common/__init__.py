"""What every Meshcast service shares: settings, namespaces, logs, traces, metrics."""
