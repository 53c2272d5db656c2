"""A real S3-compatible server for tests: moto's standalone server (`moto_server`, from `moto[server]`), in
its own process, on a free port of 127.0.0.1, reached over HTTP like any store (as s3fs's own tests do).

Authentication is on: the fixture makes one IAM user with a key allowed everything while the server still
takes unsigned requests, then makes the server check every request's signature, so wrong credentials are
refused as a real store refuses them. The session fixture `s3_server` sets the process environment the way a
user would (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL_S3`, `AWS_DEFAULT_REGION`);
subprocesses (`curate ...`) inherit it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REGION = "us-east-1"
START_TIMEOUT_S = 60
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass(frozen=True)
class S3Server:
    """A running moto server: its endpoint and the credentials it accepts."""

    endpoint: str
    key: str
    secret: str

    def env(self) -> dict[str, str]:
        """The environment variables through which curate (s3fs, botocore) finds this store."""
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        """A boto3 S3 client with the accepted credentials (test setup and checks)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret)

    def new_bucket(self, prefix: str = "curate") -> str:
        """A fresh empty bucket; its `s3://` URL."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes) -> bytes:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def _wait_until_up(endpoint: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with code {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not answer at {endpoint} within {START_TIMEOUT_S} s") from None
            time.sleep(0.1)


def _make_user(endpoint: str) -> tuple[str, str]:
    """An IAM user allowed everything, made while the server takes unsigned requests; then signatures are on."""
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup",
                       aws_secret_access_key="setup")
    iam.create_user(UserName="curate")
    key = iam.create_access_key(UserName="curate")["AccessKey"]
    iam.put_user_policy(UserName="curate", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL))
    _post(f"{endpoint}/moto-api/reset-auth", b"0")  # from now on every request must be signed by a known key
    return key["AccessKeyId"], key["SecretAccessKey"]


def start_moto_server(log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start `moto_server` on a free port; its process and endpoint URL."""
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(endpoint, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, endpoint


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """A moto S3 server for the whole test session, its credentials and endpoint set in the environment."""
    from s3fs import S3FileSystem

    proc, endpoint = start_moto_server(tmp_path_factory.mktemp("moto") / "moto_server.log")
    try:
        server = S3Server(endpoint, *_make_user(endpoint))
        with pytest.MonkeyPatch.context() as env:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL"):
                env.delenv(name, raising=False)
            for name, value in server.env().items():
                env.setenv(name, value)
            S3FileSystem.clear_instance_cache()  # a filesystem made before keeps its old credentials
            yield server
        S3FileSystem.clear_instance_cache()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
