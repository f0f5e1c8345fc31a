"""Test-support helpers shared by the whole suite.

* :mod:`tests.support.s3server` -- a real S3 endpoint (moto server subprocess,
  or MinIO/AWS chosen via ``TEST_S3_*`` environment variables).
* :mod:`tests.support.proxy` -- a byte-transparent recording HTTP proxy used to
  observe (and, later, to disturb) the traffic between the service and S3
  (its HTTP framing helpers live in ``_httpwire``).
* :mod:`tests.support.videos` -- real H.264 MP4 files produced by ffmpeg.

Nothing here uses mocks: the point is to exercise real sockets, real botocore
and real media files.
"""
