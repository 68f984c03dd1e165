"""Start the local-bigquery emulator, accepting application/octet-stream JSON bodies,
with its insertId dedup made safe under concurrent requests.

gcp-bigquery-client (default `gzip` feature) posts insertAll as
`Content-Type: application/octet-stream` + `Content-Encoding: gzip`. Real BigQuery takes
that; local-bigquery 0.4.0 gunzips the body itself but answers 400 to the content type.
This launcher adds one ASGI middleware that relabels such bodies on the REST API as
application/json, then runs the emulator's own CLI (same arguments as `local-bigquery`).

local-bigquery 0.4.0 evicts its insertId dedup entries (60 s window) by scanning every
entry on every insertAll and deleting the expired ones without a lock: two concurrent
requests after the first minute race on the same key and one fails with HTTP 500
`KeyError(...)`, and each request costs time proportional to the rows of the last minute.
The replacement below takes a lock and evicts from the oldest entry (entries are only ever
appended, so the expired ones are at the front); dedup semantics are unchanged.

Usage: python bq_emulator_launcher.py --host 127.0.0.1 --port P --grpc-port G --project X --data-dir D
"""

import os
import shutil
import sys
import threading
import time

from local_bigquery.app import app
from local_bigquery.catalog import tabledata
from local_bigquery.cli import main

API_PREFIX = "/bigquery/"  # not /upload/, where octet-stream is a real media type


class OctetStreamAsJson:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(API_PREFIX):
            headers = scope.get("headers", [])
            if any(k == b"content-type" and v.split(b";")[0].strip().lower() == b"application/octet-stream"
                   for k, v in headers):
                headers = [(k, b"application/json") if k == b"content-type" else (k, v) for k, v in headers]
                scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


_dedup_lock = threading.Lock()


def _deduplicate(table, rows):
    with _dedup_lock:
        recent = tabledata._recent
        now = time.monotonic()
        while recent:
            oldest = next(iter(recent))
            if now - recent[oldest] <= tabledata.DEDUP_SECONDS:
                break
            del recent[oldest]
        unique = []
        for index, insert_id, data in rows:
            if insert_id is None or (table, insert_id) not in recent:
                recent[(table, insert_id)] = now
                unique.append((index, data))
        return unique


tabledata._deduplicate = _deduplicate

# Outermost middleware; the emulator's own GzipRequests middleware still gunzips the body.
# The CLI runs uvicorn on "local_bigquery:app", i.e. this same (already imported) app object.
app.add_middleware(OctetStreamAsJson)



def _exit_with_owner(owner_pid, cleanup_dir):
    """LANDFALL_EMULATOR_OWNER_PID: exit (deleting LANDFALL_EMULATOR_CLEANUP_DIR) once that
    process is gone, for an emulator started by a test binary that cannot stop it itself."""
    while True:
        time.sleep(0.5)
        try:
            os.kill(owner_pid, 0)
        except ProcessLookupError:
            if cleanup_dir:
                shutil.rmtree(cleanup_dir, ignore_errors=True)
            os._exit(0)
        except PermissionError:
            pass


if os.environ.get("LANDFALL_EMULATOR_OWNER_PID"):
    threading.Thread(target=_exit_with_owner, daemon=True,
                     args=(int(os.environ["LANDFALL_EMULATOR_OWNER_PID"]), os.environ.get("LANDFALL_EMULATOR_CLEANUP_DIR"))).start()

if __name__ == "__main__":
    main(sys.argv[1:])
