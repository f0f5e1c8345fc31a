"""Test-only start-up hook, put on PYTHONPATH by tests/badinput/test_part_limit.py.

The service has no option for S3's 10,000-part limit (``worker.planning.MAX_PARTS``,
imported by value into ``worker.uploader``). Python imports ``sitecustomize`` in
every interpreter it starts -- the supervisor and each spawned worker -- so setting
``VSP_TEST_MAX_PARTS`` lowers the limit in the real processes without editing the
service. Without the variable this file does nothing.
"""

import os

_limit = os.environ.get("VSP_TEST_MAX_PARTS")
if _limit:
    import worker.planning

    worker.planning.MAX_PARTS = int(_limit)  # before worker.uploader copies it
