"""The supervisor process: configuration, the watchdog observer, routing of path
events to a fixed set of worker processes, their lifecycle, and the HTTP endpoint."""
