"""The baseline client: a plain boto3 loop that put_object's every file in fixed-size chunks.

Run as its own process by ``bench/run.py`` so that its CPU (interpreter start-up
included, as for every other client) is measured by the OS with ``wait4``.
Credentials come from the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``).

Deliberately plain: a default boto3 client (path-style addressing, as any client of a
non-AWS endpoint needs), one ``put_object`` per chunk, nothing else. No hashing,
no verification, no checkpoint, no server-side assembly.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import boto3
from botocore.config import Config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="boto3")
    parser.add_argument("--chunk-size", type=int, default=10 * 1024 * 1024)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    client = boto3.session.Session().client(
        "s3", endpoint_url=args.endpoint, region_name=os.environ.get("AWS_DEFAULT_REGION",
                                                                     "us-east-1"),
        config=Config(s3={"addressing_style": "path"}))
    files = sorted(p for p in args.directory.iterdir()
                   if p.is_file() and p.suffix.lower() == ".mp4")
    for path in files:
        with open(path, "rb") as f:
            index = 0
            while True:
                data = f.read(args.chunk_size)
                if not data:
                    break
                client.put_object(Bucket=args.bucket, Key=f"{args.prefix}/{path.name}/{index:06d}",
                                  Body=data)
                index += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
