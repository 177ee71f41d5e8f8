"""A plain S3 client (boto3) for keepring's S3-volume tests: it puts objects in
keepstore's layout and reports what a bucket holds, so the tests never check keepring
with keepring's own S3 client. The store comes from S3_ENDPOINT, S3_REGION, S3_BUCKET,
S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY.

    s3_plain.py put KEY FILE|-      put FILE's bytes (- : empty) with its Content-MD5
    s3_plain.py head KEY            print "size etag last_modified_unix" or "missing"
    s3_plain.py get KEY             print the object's bytes, hex
    s3_plain.py list PREFIX         print "key size" per object under PREFIX
    s3_plain.py delete KEY
"""

import base64
import hashlib
import os
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["S3_ENDPOINT"],
        region_name=os.environ["S3_REGION"],
        aws_access_key_id=os.environ["S3_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["S3_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def main(argv):
    s3 = client()
    bucket = os.environ["S3_BUCKET"]
    command, key = argv[1], argv[2]
    if command == "put":
        data = b"" if argv[3] == "-" else open(argv[3], "rb").read()
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentMD5=md5)
    elif command == "head":
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                print("missing")
                return
            raise
        print(head["ContentLength"], head["ETag"].strip('"'), int(head["LastModified"].timestamp()))
    elif command == "get":
        print(s3.get_object(Bucket=bucket, Key=key)["Body"].read().hex())
    elif command == "list":
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            for item in page.get("Contents", []):
                print(item["Key"], item["Size"])
    elif command == "delete":
        s3.delete_object(Bucket=bucket, Key=key)
    else:
        sys.exit("unknown command " + command)


if __name__ == "__main__":
    main(sys.argv)
