"""A local S3 server for the demo: moto's, in a process of its own, on 127.0.0.1.

No AWS account and nothing downloaded: moto speaks S3's REST protocol and keeps the objects in
memory. Run it by hand to point your own scripts at it (it prints the variables to export and
serves until Ctrl-C)::

    python examples/gallery/s3_tfrecords/local_s3.py

or let a script start it for as long as it runs: ``with local_s3() as env: ...`` yields the
standard AWS variables that reach it (credentials, endpoint, region).
"""
import argparse
import contextlib
import logging
import os
import select
import subprocess
import sys
import time

BUCKET = "tfos-demo"
READY = "local_s3: serving "
START_TIMEOUT = 60.0


def aws_environment(endpoint):
    """The variables that make s3fs, boto3 and tfos.files use the server at ``endpoint``."""
    return {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
            "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}


def serve(bucket, port):
    """Starts the server and creates ``bucket``, announces the endpoint, then serves until
    standard input ends (its parent closed it) or Ctrl-C."""
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = "http://%s:%d" % (host, port)
    import s3fs
    s3fs.S3FileSystem(endpoint_url=endpoint, key="demo", secret="demo").mkdir(bucket)
    print(READY + endpoint, flush=True)
    for name, value in aws_environment(endpoint).items():
        print("export %s=%s" % (name, value), flush=True)
    print("# bucket s3://%s; serving until Ctrl-C" % bucket, flush=True)
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    server.stop()


@contextlib.contextmanager
def local_s3(bucket=BUCKET):
    """Runs ``serve`` in a child process; yields the AWS variables that reach it."""
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--bucket", bucket],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        endpoint = _announced_endpoint(child)
        yield aws_environment(endpoint)
    finally:
        child.stdin.close()          # the child's cue to stop
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _announced_endpoint(child):
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], deadline - time.monotonic())
        line = child.stdout.readline() if ready else ""
        if line.startswith(READY):
            return line[len(READY):].strip()
        if ready and not line:     # its output ended: the server exited
            raise RuntimeError("local_s3: the server exited (code %s) before serving, for the "
                               "reason printed above (moto missing? pip install 'moto[s3]' "
                               "flask flask-cors)" % child.wait(timeout=10))
    raise RuntimeError("local_s3: the server did not start within %d s" % START_TIMEOUT)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", default=BUCKET)
    parser.add_argument("--port", type=int, default=0, help="default: any free port")
    args = parser.parse_args()
    serve(args.bucket, args.port)
