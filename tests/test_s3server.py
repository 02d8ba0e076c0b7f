"""The moto S3 endpoint the object-storage tests use answers as S3 does (write, list, read)."""

import boto3


def test_moto_server_round_trip(s3_bucket, s3fs_fresh, s3_server):
    s3fs_fresh.pipe(f"{s3_bucket}/a/x.bin", b"hello")
    # an independent client (boto3, endpoint from the environment the fixture set) sees the object
    client = boto3.client("s3")
    body = client.get_object(Bucket=s3_bucket, Key="a/x.bin")["Body"].read()
    assert body == b"hello"
    assert s3fs_fresh.ls(f"{s3_bucket}/a") == [f"{s3_bucket}/a/x.bin"]
    assert client.meta.endpoint_url == s3_server
