"""Start the local-bigquery emulator, accepting application/octet-stream JSON bodies.

gcp-bigquery-client (default `gzip` feature) posts insertAll as
`Content-Type: application/octet-stream` + `Content-Encoding: gzip`. Real BigQuery takes
that; local-bigquery 0.4.0 gunzips the body itself but answers 400 to the content type.
This launcher adds one ASGI middleware that relabels such bodies on the REST API as
application/json, then runs the emulator's own CLI (same arguments as `local-bigquery`).

Usage: python bq_emulator_launcher.py --host 127.0.0.1 --port P --grpc-port G --project X --data-dir D
"""

import sys

from local_bigquery.app import app
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


# Outermost middleware; the emulator's own GzipRequests middleware still gunzips the body.
# The CLI runs uvicorn on "local_bigquery:app", i.e. this same (already imported) app object.
app.add_middleware(OctetStreamAsJson)

if __name__ == "__main__":
    main(sys.argv[1:])
