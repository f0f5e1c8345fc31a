"""Code both the supervisor and the workers use: settings, key layout, routing,
logging, metrics, S3 access and the messages they exchange."""
