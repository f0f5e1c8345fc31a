"""A worker process: uploads the streams whose paths hash to its slot, in order,
with blocking boto3 calls, and keeps their checkpoints in its own LevelDB."""
