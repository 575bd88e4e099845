"""ASGI middleware of the public service: a body-size limit and the content type each route takes.

Rejected requests get a 413 or a 415 with ``{"error": "..."}`` before BentoML parses anything.
"""

from __future__ import annotations

import json
import re

# Route -> accepted media types; "" is a request without a Content-Type (BentoML reads JSON).
CONTENT_TYPES: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"/predict"), ("application/json", "")),
    (re.compile(r"/predict_image"), ("multipart/form-data",)),
    (re.compile(r"/v2/models/[^/]+(/versions/[^/]+)?/infer"),
     ("application/json", "application/octet-stream", "")),
)


def accepted_types(path: str) -> tuple[str, ...] | None:
    for pattern, types in CONTENT_TYPES:
        if pattern.fullmatch(path):
            return types
    return None


async def send_error(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """Refuse bodies over ``max_body_bytes`` (declared or streamed) and wrong content types."""

    def __init__(self, app, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {key.lower(): value.decode("latin-1") for key, value in scope["headers"]}
        accepted = accepted_types(scope["path"])
        media_type = headers.get(b"content-type", "").split(";")[0].strip().lower()
        if accepted is not None and media_type not in accepted:
            shown = " or ".join(t for t in accepted if t)
            await send_error(send, 415, f"{scope['path']} takes {shown}, not "
                             f"{media_type or 'a body without Content-Type'}")
            return
        limit = self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await send_error(send, 400, f"Content-Length {declared!r} is not a number")
                return
            if int(declared) > limit:
                await send_error(send, 413, f"the body is {int(declared):,} bytes: the limit is "
                                 f"{limit:,} (MNIST_MAX_BODY_BYTES)")
                return
        # Read the body here, bounded, so that a chunked upload cannot exceed the limit either.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_error(send, 413, f"the body is over the limit of {limit:,} bytes "
                                 "(MNIST_MAX_BODY_BYTES)")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # waits for the disconnect, as a real receive would

        await self.app(scope, replay, send)
