"""The bench's reference peer: a bare ASGI app under uvicorn+httptools (uvloop) answering one
fixed JSON body to every request, on a unix socket. It does no work of its own, so its figures
are the ceiling of a uvicorn-based plugin: what dockplug's own server is held against.

    python bench/bare_asgi.py SOCKET
"""

from __future__ import annotations

import os
import sys
from typing import Any

import uvicorn

BODY = b'{"Implements":["VolumeDriver"],"Volume":{"Name":"bv","Mountpoint":"/bv"}}'
HEADERS = [
    (b"content-type", b"application/vnd.docker.plugins.v1+json"),
    (b"content-length", str(len(BODY)).encode()),
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def main() -> None:
    path = sys.argv[1]
    if os.path.exists(path):
        os.unlink(path)
    uvicorn.run(
        app, uds=path, http="httptools", loop="uvloop", lifespan="off", access_log=False,
        log_level="warning", server_header=False, date_header=False,
    )  # fmt: skip


if __name__ == "__main__":
    main()
