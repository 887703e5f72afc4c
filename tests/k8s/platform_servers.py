"""Real servers for the chart's configuration, on 127.0.0.1: Postgres with pgvector (the pgserver
wheel's binaries) and S3 (moto's server, standing in for MinIO)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from conftest import free_port


def start_postgres(root: Path, user: str, password: str, database: str) -> tuple[subprocess.Popen, int]:
    """initdb + postgres on 127.0.0.1 with scram-sha-256 password auth (as the chart's clients log in)."""
    from pgserver._commands import POSTGRES_BIN_PATH as BIN

    run_as = None
    if os.geteuid() == 0:  # postgres refuses root: run it as pgserver's own system user
        import pwd

        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        run_as = "pgserver"
        ensure_user_exists(run_as)
        ensure_prefix_permissions(root)
        ensure_prefix_permissions(BIN)
        ensure_folder_permissions(BIN, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(BIN.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        os.chown(root, pwd.getpwnam(run_as).pw_uid, pwd.getpwnam(run_as).pw_gid)
    pwfile = root / "pw"
    pwfile.write_text(password)
    os.chmod(pwfile, 0o644)
    subprocess.run([str(BIN / "initdb"), "-D", str(root / "data"), "-U", user, "--auth=scram-sha-256",
                    f"--pwfile={pwfile}", "-E", "UTF8"], user=run_as, check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([str(BIN / "postgres"), "-D", str(root / "data"), "-h", "127.0.0.1", "-p", str(port),
                             "-k", str(root)], user=run_as, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "PGPASSWORD": password}
    for _ in range(120):
        if subprocess.run([str(BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                          capture_output=True).returncode == 0:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}")
        time.sleep(0.25)
    subprocess.run([str(BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, database], env=env,
                   check=True, capture_output=True)
    return proc, port


def start_s3(bucket: str, access_key: str, secret_key: str) -> tuple[subprocess.Popen, str]:
    """moto's S3 server with one bucket; returns (process, endpoint URL)."""
    import boto3

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    from shipyard.serving.local import wait_ready

    wait_ready(f"{url}/moto-api/", proc, 60, "moto S3 server")
    boto3.client("s3", endpoint_url=url, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    return proc, url
