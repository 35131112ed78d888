"""A fake Gemini endpoint on 127.0.0.1 for tests that run the real ``google-genai`` client.

    with FakeGemini() as fake:                      # threads, bounded delays, stops by itself
        cfg.teacher.gemini.base_url = fake.url
        fake.queue(Fault.status(429, retry_after="0.01"), Fault.blocked())   # next two requests
        fake.fault_rate, fake.fault_pool = 0.3, [Fault.status(503)]           # random faults (seeded)
        ...
        fake.calls            # every request: path, headers, body (the JSON the client sent)
        fake.inline_parts()   # the decoded bytes of every inlineData part sent
        fake.answered         # Counter: request content digest -> times answered with 200

``answer`` (a callable body -> dict) sets the JSON object the model "writes"; the default
writes an ``{"answer": ...}`` naming the structure from the request text.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_DELAY_S = 5.0  # a delay fault never holds a server thread longer than this


@dataclass(frozen=True)
class Fault:
    """How to answer one request instead of normally."""

    kind: str  # status | delay | malformed | blocked | prompt_blocked | empty | not_json
    code: int = 200
    retry_after: str | None = None
    seconds: float = 0.0

    @classmethod
    def status(cls, code: int, retry_after: str | None = None) -> Fault:
        return cls("status", code=code, retry_after=retry_after)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        return cls("delay", seconds=min(seconds, MAX_DELAY_S))

    @classmethod
    def malformed(cls) -> Fault:
        return cls("malformed")

    @classmethod
    def blocked(cls) -> Fault:
        return cls("blocked")

    @classmethod
    def prompt_blocked(cls) -> Fault:
        return cls("prompt_blocked")

    @classmethod
    def empty(cls) -> Fault:
        return cls("empty")


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    fault: Fault | None

    @property
    def digest(self) -> str:
        """The request's content, independent of retries."""
        return hashlib.sha256(json.dumps(self.body, sort_keys=True).encode()).hexdigest()


def default_answer(body: dict[str, Any]) -> dict[str, Any]:
    text = " ".join(p.get("text", "") for c in body.get("contents", []) for p in c.get("parts", []))
    match = re.search(r"Structure: (.+)", text)
    name = match.group(1).strip() if match else "structure"
    words = " ".join(["It guides the dissection along the mesocolic plane."] * 6)
    return {"answer": f"The highlighted structure is the {name}. {words}"}


def _candidate(text: str, finish: str = "STOP") -> dict[str, Any]:
    return {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": finish, "index": 0}


class FakeGemini:
    """A threaded HTTP server answering ``POST .../models/<m>:generateContent`` like Gemini."""

    def __init__(self, answer: Callable[[dict[str, Any]], dict[str, Any]] = default_answer, seed: int = 0):
        self.answer = answer
        self.calls: list[Call] = []
        self.answered: Counter[str] = Counter()
        self.fault_rate = 0.0
        self.fault_pool: list[Fault] = []
        self._queue: list[Fault] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeGemini:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def queue(self, *faults: Fault) -> None:
        """Apply ``faults`` to the next requests, one each, in order."""
        with self._lock:
            self._queue.extend(faults)

    def inline_parts(self) -> list[bytes]:
        return [
            base64.urlsafe_b64decode(p["inlineData"]["data"].replace("+", "-").replace("/", "_"))
            for c in self.calls
            for content in c.body.get("contents", [])
            for p in content.get("parts", [])
            if "inlineData" in p
        ]

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._queue:
                return self._queue.pop(0)
            if self.fault_pool and self._rng.random() < self.fault_rate:
                return self._rng.choice(self.fault_pool)
        return None

    def _respond(self, call: Call) -> tuple[int, dict[str, str], bytes]:
        fault = call.fault
        if fault is not None and fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            error = {"error": {"code": fault.code, "message": "fake fault", "status": "UNAVAILABLE"}}
            return fault.code, headers, json.dumps(error).encode()
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
        if fault is not None and fault.kind == "not_json":
            return 200, {}, b"<html>not json</html>"
        body: dict[str, Any] = {"usageMetadata": {"promptTokenCount": 1}, "modelVersion": "fake"}
        if fault is not None and fault.kind == "empty":
            body["candidates"] = []
        elif fault is not None and fault.kind == "prompt_blocked":
            body["promptFeedback"] = {"blockReason": "SAFETY"}
        elif fault is not None and fault.kind == "blocked":
            body["candidates"] = [{"finishReason": "SAFETY", "index": 0}]
        elif fault is not None and fault.kind == "malformed":
            body["candidates"] = [_candidate('{"answer": "The highlighted struc')]
        else:
            body["candidates"] = [_candidate(json.dumps(self.answer(call.body)))]
            with self._lock:
                self.answered[call.digest] += 1
        return 200, {}, json.dumps(body).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                call = Call(self.path, dict(self.headers.items()), json.loads(raw or b"{}"), fake._next_fault())
                with fake._lock:
                    fake.calls.append(call)
                if ":generateContent" not in self.path:
                    status, headers, payload = 404, {}, b'{"error": {"code": 404, "message": "unknown method"}}'
                else:
                    status, headers, payload = fake._respond(call)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        return Handler
