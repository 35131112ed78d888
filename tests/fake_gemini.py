"""A fake Gemini endpoint on 127.0.0.1 for tests that run the real ``google-genai`` client.

    with FakeGemini() as fake:                      # threads, bounded delays, stops by itself
        cfg.teacher.gemini.base_url = fake.url
        fake.queue(Fault.status(429, retry_after="0.01"), Fault.blocked())   # next two requests
        fake.fault_rate, fake.fault_pool = 0.3, [Fault.status(503)]           # random faults (seeded)
        ...
        fake.calls            # every request: path, headers, body (the JSON the client sent), fault, arrival
        fake.inline_parts()   # the decoded bytes of every inlineData part sent
        fake.answered         # Counter: request content digest -> times answered with a usable answer (paid)
    audited_requests(path)    # the request lines of an audit log, without its section headers

The faults are those of real networks, gateways and models: error statuses (with Retry-After),
slow answers, hangs past the client's timeout, connection resets, 200 bodies cut off mid-JSON or
replaced by a proxy's HTML page, 200s without candidates or without text, safety blocks, and
answers that are not the JSON the schema asks for. A ``sticky`` fault, once drawn for a request,
answers every later attempt of that request the same way (a prompt the model always fails).
``answer`` (a callable body -> dict) sets the JSON object the model "writes"; the default
writes an ``{"answer": ...}`` naming the structure from the request text.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cme_vlm import atomic
from cme_vlm.teacher.privacy import SECTION_KEY

MAX_DELAY_S = 5.0  # a delay or hang never holds a server thread longer than this


@dataclass(frozen=True)
class Fault:
    """How to answer one request instead of normally."""

    # status | delay | hang | reset | truncated | not_json | empty | no_text | blocked | prompt_blocked | off_schema
    kind: str
    code: int = 200
    retry_after: str | None = None
    seconds: float = 0.0
    sticky: bool = False

    @classmethod
    def status(cls, code: int, retry_after: str | None = None) -> Fault:
        return cls("status", code=code, retry_after=retry_after)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Answer normally, ``seconds`` late."""
        return cls("delay", seconds=min(seconds, MAX_DELAY_S))

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        """Say nothing for ``seconds`` (longer than the client's timeout), then drop the connection."""
        return cls("hang", seconds=min(seconds, MAX_DELAY_S))

    @classmethod
    def reset(cls) -> Fault:
        """Reset the connection (TCP RST) instead of answering."""
        return cls("reset")

    @classmethod
    def truncated(cls) -> Fault:
        """A 200 whose body is the first half of a normal answer's JSON (complete as HTTP)."""
        return cls("truncated")

    @classmethod
    def not_json(cls) -> Fault:
        """A 200 carrying a proxy's HTML page."""
        return cls("not_json")

    @classmethod
    def empty(cls) -> Fault:
        """A 200 without candidates."""
        return cls("empty")

    @classmethod
    def no_text(cls) -> Fault:
        """A 200 whose one candidate stopped normally but holds no text."""
        return cls("no_text")

    @classmethod
    def blocked(cls) -> Fault:
        """The answer stopped by the safety filter."""
        return cls("blocked")

    @classmethod
    def prompt_blocked(cls) -> Fault:
        """The prompt refused by the safety filter: no candidates, a block reason."""
        return cls("prompt_blocked")

    @classmethod
    def off_schema(cls, sticky: bool = False) -> Fault:
        """The model writes cut-off JSON instead of the object the schema asks for."""
        return cls("off_schema", sticky=sticky)


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    fault: Fault | None = None
    arrived: float = field(default_factory=time.monotonic)

    @property
    def digest(self) -> str:
        """The request's content, independent of retries."""
        return content_digest(self.body)


def content_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def audited_requests(path: Path) -> list[dict[str, Any]]:
    """The request lines of an audit log, every section's (the section headers left out)."""
    return [line for line in atomic.read_jsonl(path) if SECTION_KEY not in line]


def default_answer(body: dict[str, Any]) -> dict[str, Any]:
    text = " ".join(p.get("text", "") for c in body.get("contents", []) for p in c.get("parts", []))
    match = re.search(r"Structure: (.+)", text)
    name = match.group(1).strip() if match else "structure"
    words = " ".join(["It guides the dissection along the mesocolic plane."] * 6)
    return {"answer": f"The highlighted structure is the {name}. {words}"}


def _candidate(text: str | None, finish: str = "STOP") -> dict[str, Any]:
    parts = [{"text": text}] if text is not None else []
    return {"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}


class FakeGemini:
    """A threaded HTTP server answering ``POST .../models/<m>:generateContent`` like Gemini."""

    def __init__(self, answer: Callable[[dict[str, Any]], dict[str, Any]] = default_answer, seed: int = 0):
        self.answer = answer
        self.calls: list[Call] = []
        self.answered: Counter[str] = Counter()
        self.fault_rate = 0.0
        self.fault_pool: list[Fault] = []
        self._queue: list[Fault | None] = []
        self._stuck: dict[str, Fault] = {}
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

    def queue(self, *faults: Fault | None) -> None:
        """Apply ``faults`` to the next requests, one each, in order (None: answer that one normally)."""
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

    def _next_fault(self, digest: str) -> Fault | None:
        with self._lock:
            if digest in self._stuck:
                return self._stuck[digest]
            fault = None
            if self._queue:
                fault = self._queue.pop(0)
            elif self.fault_pool and self._rng.random() < self.fault_rate:
                fault = self._rng.choice(self.fault_pool)
            if fault is not None and fault.sticky:
                self._stuck[digest] = fault
            return fault

    def _model_body(self, call: Call) -> dict[str, Any]:
        """The JSON a 200 carries: the model's answer, or the fault's stand-in for it."""
        kind = call.fault.kind if call.fault else ""
        body: dict[str, Any] = {"usageMetadata": {"promptTokenCount": 1}, "modelVersion": "fake"}
        if kind == "empty":
            body["candidates"] = []
        elif kind == "no_text":
            body["candidates"] = [_candidate(None)]
        elif kind == "prompt_blocked":
            body["promptFeedback"] = {"blockReason": "SAFETY"}
        elif kind == "blocked":
            body["candidates"] = [{"finishReason": "SAFETY", "index": 0}]
        elif kind == "off_schema":
            body["candidates"] = [_candidate('{"answer": "The highlighted struc')]
        else:
            body["candidates"] = [_candidate(json.dumps(self.answer(call.body)))]
        return body

    def _respond(self, call: Call) -> tuple[int, dict[str, str], bytes]:
        fault = call.fault
        kind = fault.kind if fault else ""
        if kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            error = {"error": {"code": fault.code, "message": "fake fault", "status": "UNAVAILABLE"}}
            return fault.code, headers, json.dumps(error).encode()
        if kind == "not_json":
            return 200, {"Content-Type": "text/html"}, b"<html><body>502 Bad Gateway</body></html>"
        if kind == "delay":
            time.sleep(fault.seconds)
        payload = json.dumps(self._model_body(call)).encode()
        if kind == "truncated":
            return 200, {}, payload[: len(payload) // 2]
        if kind in ("", "delay"):
            with self._lock:
                self.answered[call.digest] += 1
        return 200, {}, payload

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _drop(self, seconds: float = 0.0) -> None:
                """Close the connection with a TCP reset, after ``seconds`` of silence."""
                time.sleep(seconds)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw or b"{}")
                call = Call(self.path, dict(self.headers.items()), body, fake._next_fault(content_digest(body)))
                with fake._lock:
                    fake.calls.append(call)
                if call.fault is not None and call.fault.kind in ("reset", "hang"):
                    return self._drop(call.fault.seconds)
                if ":generateContent" not in self.path:
                    status, headers, payload = 404, {}, b'{"error": {"code": 404, "message": "unknown method"}}'
                else:
                    status, headers, payload = fake._respond(call)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        return Handler
