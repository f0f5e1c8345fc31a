"""``processor playlist STREAM``: a stream's live playlist (contract §6) with presigned
URLs, for a player that has no S3 credentials.

``STREAM`` is a stream id (``cam-0a1b2c3d``), its prefix ``P`` or the playlist's key.
An id is found by walking the "folders" under ``--s3-prefix`` (one LIST per folder
level and 1,000 names, never the objects themselves): cheap for a prefix per host, and
what a key or ``P`` skips. Each URI becomes a presigned GET of its object; a segment's
URL expires ``DURATION`` plus its sequence number in seconds from now, so that no two
segments share a URL (FFmpeg's HLS demuxer mishandles contiguous byte ranges of one URL:
worker/playlist.py). The init section and byte ranges are kept as they are.
"""

from __future__ import annotations

import posixpath
import sys
from typing import Any
from urllib.parse import unquote

import click

from shared.s3 import describe
from shared.settings import parse_duration

__all__ = ["playlist"]

MAX_PRESIGN = 7 * 24 * 3600  # SigV4's longest presigned URL


def find_prefix(client: Any, bucket: str, root: str, stream: str) -> str | None:
    """``P`` of stream id ``stream`` under ``root``, walking folders breadth-first."""
    level = [root.strip("/") + "/" if root.strip("/") else ""]
    while level:
        deeper = []
        for prefix in level:
            for page in client.get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix=prefix, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    folder = common["Prefix"]
                    if folder.rstrip("/").rpartition("/")[2] == stream:
                        return str(folder.rstrip("/"))
                    deeper.append(folder)
        level = deeper
    return None


def presigned(text: str, key: str, sign: Any) -> str:
    """The playlist at ``key`` with every URI replaced by ``sign(key, number)``."""
    base = posixpath.dirname(key)
    out, number = [], 0
    for line in text.splitlines():
        if line.startswith("#EXT-X-MAP:"):
            head, _, rest = line.partition('URI="')
            uri, _, tail = rest.partition('"')
            line = f'{head}URI="{sign(posixpath.join(base, unquote(uri)), 0)}"{tail}'
        elif line and not line.startswith("#"):
            uri = line.partition("?")[0]
            line = sign(posixpath.join(base, unquote(uri)), number)
            number += 1
        out.append(line)
    return "\n".join(out) + "\n"


@click.command(context_settings={"auto_envvar_prefix": "PROCESSOR", "show_default": True})
@click.argument("stream")
@click.option("--presign", "duration", required=True,
              help="How long the URLs stay valid: 30m, 12h, 7d (S3 allows at most 7 days).")
@click.option("--s3-endpoint", default=None, help="S3 API endpoint [default: AWS]")
@click.option("--s3-bucket", default="video-streams")
@click.option("--s3-prefix", default="streams")
@click.option("--s3-region", default="us-east-1")
def playlist(stream: str, duration: str, s3_endpoint: str | None, s3_bucket: str,
             s3_prefix: str, s3_region: str) -> None:
    """Print STREAM's playlist (a stream id, its prefix or its playlist key) with
    presigned URLs valid for --presign."""
    try:
        seconds = int(parse_duration(duration))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--presign") from exc
    if not 1 <= seconds <= MAX_PRESIGN:
        raise click.BadParameter("must be between 1s and 7d", param_hint="--presign")
    import boto3
    from botocore.config import Config

    # SigV4 presigning (botocore presigns SigV2 for a custom endpoint unless told)
    client = boto3.session.Session().client("s3", endpoint_url=s3_endpoint or None, config=Config(
        region_name=s3_region, signature_version="s3v4",
        s3={"addressing_style": "path" if s3_endpoint else "auto"}))
    try:
        if stream.endswith(".m3u8"):
            key = stream
        elif "/" in stream:
            key = stream.rstrip("/") + "/playlist.m3u8"
        else:
            prefix = find_prefix(client, s3_bucket, s3_prefix, stream)
            if prefix is None:
                raise click.ClickException(f"no stream {stream!r} under "
                                           f"s3://{s3_bucket}/{s3_prefix}")
            key = f"{prefix}/playlist.m3u8"
        try:
            text = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read().decode()
        except client.exceptions.NoSuchKey:
            raise click.ClickException(
                f"no playlist at s3://{s3_bucket}/{key} (a regular MP4, which has none, "
                "or a stream that has no chunk yet)") from None
    except click.ClickException:
        raise
    except Exception as exc:  # boto3's errors, said in one line
        raise click.ClickException(f"S3: {describe(exc)}") from exc

    def sign(object_key: str, number: int) -> str:
        expires = seconds + number if seconds + number <= MAX_PRESIGN else \
            max(1, seconds - number)
        return str(client.generate_presigned_url(
            "get_object", Params={"Bucket": s3_bucket, "Key": object_key},
            ExpiresIn=expires))

    sys.stdout.write(presigned(text, key, sign))
