"""Test-support helpers shared by the whole suite.

* :mod:`tests.support.s3server` -- a real S3 endpoint (moto server subprocess,
  or MinIO/AWS chosen via ``TEST_S3_*`` environment variables).
* :mod:`tests.support.proxy` -- a byte-transparent recording HTTP proxy used to
  observe (and, later, to disturb) the traffic between the service and S3
  (its HTTP framing helpers live in ``_httpwire``).
* :mod:`tests.support.videos` -- real H.264 MP4 files produced by ffmpeg.
* :mod:`tests.support.runner` -- the real ``processor`` as a process group
  (:class:`~tests.support.runner.Processor`), ``wait_until``, pids and liveness;
  its log is read incrementally by :mod:`tests.support.logs`.
* :mod:`tests.support.bucket` -- what landed in S3: keys, objects, metadata.json,
  and :func:`~tests.support.bucket.check_stream` (every contract invariant).
* :mod:`tests.support.http` and :mod:`tests.support.metrics` -- GETs of the status
  endpoint and the parsed ``/metrics`` text.
* :mod:`tests.support.puts` -- chunk PUTs and other writes the server received,
  counted from the proxy's records.
* :mod:`tests.support.markers` -- positive markers (a file routed to the same
  worker, waited for until complete) instead of sleeping and asserting nothing.

Nothing here uses mocks: the point is to exercise real sockets, real botocore
and real media files.
"""
