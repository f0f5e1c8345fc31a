"""The state dir, shared by the supervisor (migration, ``processor inspect``) and the
workers: its layout, the records and their codec, the LevelDB store, the write-ahead
log, and what a failed write means."""
