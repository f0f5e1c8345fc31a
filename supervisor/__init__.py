"""The supervisor process: configuration, the watch (watchdog), routing of path
events to a fixed set of worker processes, their lifecycle, and the HTTP endpoint."""
