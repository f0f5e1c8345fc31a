"""Side-by-side benchmark of the processor against a boto3 loop, awscli and rclone.

A package so that each concept has a module of its own (none over 400 lines), while
``bench/run.py`` (and ``python -m bench``) stays the one command line:

* :mod:`bench.cli` -- the flags and the order of the sections (``main``).
* :mod:`bench.harness` -- clients as process groups: wall time, CPU from ``wait4``,
  ``/proc`` sampling of CPU and memory, py-spy, the S3 bucket helpers.
* :mod:`bench.service` -- the real ``processor`` run by the tests' runner
  (``tests.support.runner``), with what only the bench needs on top: its start time,
  a tailing log reader, rusage when it is reaped, its metrics histograms.
* :mod:`bench.service_api` -- the only imports of the service's own modules.
* :mod:`bench.inputs` -- the MP4s fed to the clients (cached, made by ffmpeg).
* :mod:`bench.sections` -- one module per measured section.
* :mod:`bench.report` -- tables, targets, machine facts, JSON.

``bench/boto3_loop.py`` (the baseline client, run as its own process) and
``bench/watcher.py`` (the supervisor's CPU per file event) are scripts.
"""
