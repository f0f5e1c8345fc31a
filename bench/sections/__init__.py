"""One module per measured section of the benchmark.

* :mod:`.bulk` -- finished MP4s: the processor (1, 4, 8 workers) vs the boto3 loop,
  awscli and rclone; wall time, CPU per GiB, memory, where the time went.
* :mod:`.idle` -- the idle and warm idle runs: each client's fixed cost, subtracted
  from its bulk run ("marginal", "steady marginal").
* :mod:`.assembly` -- what the S3 server alone takes to assemble and complete a
  multipart upload, by plain boto3: the part of finalization that is not ours.
* :mod:`.live` -- streams written at a steady rate: per-chunk overhead, finalization.
* :mod:`.many` -- hundreds of slowly growing files: supervisor CPU, dispatch latency.

Each section returns plain figures; :mod:`bench.report` renders them.
"""
