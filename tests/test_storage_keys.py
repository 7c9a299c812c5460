"""Keys that could name something outside the archive folders are refused by S3 storage too:
some S3-compatible servers and proxies resolve ``..`` in the request URL. Against moto's S3."""

from __future__ import annotations

from typing import Any

import pytest

from app.integrations.storage import StorageError
from app.integrations.storage.s3 import S3Storage


@pytest.mark.parametrize("key", ["keys/../other/x", "../x", "/abs", "keys//x", "keys/./x", ""])
async def test_s3_refuses_keys_that_are_not_plain_relative_paths(
        s3_endpoint: str, s3: Any, bucket: str, key: str) -> None:
    s3.put_object(Bucket=bucket, Key="other/x", Body=b"keep")
    store = await S3Storage.open(bucket=bucket, prefix="keys-prefix", endpoint_url=s3_endpoint,
                                 region="us-east-1", concurrency=2)
    try:
        for call in (store.get(key), store.put(key, b"x"), store.start_upload(key)):
            with pytest.raises(StorageError):
                await call
        with pytest.raises(StorageError):
            async for _ in store.iter_chunks(key):
                pass
    finally:
        await store.close()
    assert s3.get_object(Bucket=bucket, Key="other/x")["Body"].read() == b"keep"
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="keys-prefix")


async def test_s3_lists_odd_keys_as_unusable_and_can_still_delete_them(
        s3_endpoint: str, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="odd/t/20260102T000000Z-bbbbbb/../x", Body=b"odd")
    store = await S3Storage.open(bucket=bucket, prefix="odd", endpoint_url=s3_endpoint,
                                 region="us-east-1", concurrency=2)
    try:
        [obj] = await store.list_objects("t/")
        assert obj.key == "t/20260102T000000Z-bbbbbb/../x" and obj.usable is False
        await store.delete([obj.key])
        assert await store.list_objects("t/") == []
    finally:
        await store.close()
