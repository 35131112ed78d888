"""A review sheet (CSV) served as a local web form that saves every entry to the CSV as it is made.

One form serves the three sheets (blinded expert evaluation, teacher-answer review, preference
pair review): a ``SheetForm`` says which columns a card shows and which it asks for, how to
draw a row's image, and how the matching ``import`` checks the whole sheet. Each entry is
written at once, atomically, to the same CSV the import reads, so a reload (or a restart of the
server) shows what was saved and the reviewer resumes where they left off. Flask gives the
routes and templates; werkzeug's threaded server runs them and stops on ``shutdown``.
The form is served on loopback only unless the caller explicitly allows another host.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from flask import Flask, Response, jsonify, render_template, request
from rich.console import Console
from werkzeug.serving import BaseWSGIServer, make_server

from cme_vlm import atomic
from cme_vlm.errors import ConfigError, DataError

console = Console(stderr=True)
SEPARATOR = ";"  # joins the options of a multiple-choice field in its CSV cell, as the imports split them
STOP_WAIT_S = 10.0


@dataclass(frozen=True)
class Shown:
    """A text column shown on each card, under ``label``."""

    label: str
    column: str

    @property
    def kind(self) -> str:
        return "shown"


@dataclass(frozen=True)
class Field:
    """A column the reviewer fills: one of ``options`` (several if ``multiple``), or free text without options."""

    column: str
    label: str
    options: tuple[str, ...] = ()
    multiple: bool = False
    required: bool = False  # counts towards a card being complete

    @property
    def kind(self) -> str:
        return "multiple" if self.multiple else "choice" if self.options else "text"

    def clean(self, value: str) -> str:
        """``value`` as it goes into the CSV; a value outside ``options`` is a ``DataError``."""
        value = value.strip()
        if not self.options:
            return value
        chosen = [v for v in value.split(SEPARATOR) if v] if self.multiple else [value] if value else []
        bad = [v for v in chosen if v not in self.options]
        if bad or (len(chosen) > 1 and not self.multiple):
            raise DataError(f"'{value}' is not a valid {self.label}; choose from {', '.join(self.options)}.")
        return SEPARATOR.join(o for o in self.options if o in chosen)


@dataclass(frozen=True)
class SheetForm:
    """What the web form of one sheet shows, asks and checks."""

    title: str
    instruction: str
    sheet: Path  # the CSV that the matching import reads
    key_column: str  # identifies a row, e.g. "case" or "id"
    heading: tuple[str, ...]  # columns joined into each card's heading
    items: tuple[Shown | Field, ...]  # the card's content, in order
    image: Callable[[dict[str, str]], bytes | None]  # a row's cells -> its overlay as PNG bytes, None if missing
    check: Callable[[], object]  # reads the whole sheet as the import does; raises DataError listing problems
    done: str  # shown when the check passes, e.g. the import command

    @property
    def fields(self) -> dict[str, Field]:
        return {i.column: i for i in self.items if isinstance(i, Field)}

    def complete(self, row: dict[str, str]) -> bool:
        return all(row.get(c) for c, f in self.fields.items() if f.required)


def read_rows(form: SheetForm) -> tuple[list[str], list[dict[str, str]]]:
    """The sheet's header and rows; a sheet the form cannot save into is a ``DataError``."""
    try:
        text = form.sheet.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"sheet '{form.sheet}' cannot be read ({e}). Export it again.") from e
    reader = csv.DictReader(io.StringIO(text))
    header = list(reader.fieldnames or [])
    missing = [c for c in (form.key_column, *form.heading, *(i.column for i in form.items)) if c not in header]
    if missing:
        raise DataError(f"sheet '{form.sheet}' lacks the column(s) {', '.join(missing)}. Export it again.")
    rows = list(reader)
    ragged = [n for n, r in enumerate(rows, start=2) if None in r]
    if ragged:
        raise DataError(f"sheet '{form.sheet}' has more cells than columns on row(s) {ragged}. "
                        "Fix those lines or export the sheet again.")
    return header, rows


def save_entry(form: SheetForm, key: str, column: str, value: str) -> list[dict[str, str]]:
    """Write one entry into the sheet (atomically) and return its rows as saved."""
    field = form.fields.get(column)
    if field is None:
        raise DataError(f"'{column}' is not an input of this form; reload the page.")
    header, rows = read_rows(form)
    row = next((r for r in rows if r[form.key_column] == key), None)
    if row is None:
        raise DataError(f"{form.key_column} '{key}' is not in sheet '{form.sheet}'; reload the page.")
    row[column] = field.clean(value)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(form.sheet, buf.getvalue())
    return rows


def create_app(form: SheetForm) -> Flask:
    """The form's routes: the page, one save per entry, the images, and the final check."""
    app = Flask(__name__)
    lock = threading.Lock()  # one read-modify-write of the CSV at a time

    def progress(rows: list[dict[str, str]]) -> dict[str, int]:
        return {"complete": sum(form.complete(r) for r in rows), "total": len(rows)}

    @app.get("/")
    def page() -> str:
        with lock:
            _, rows = read_rows(form)
        resume = next((r[form.key_column] for r in rows if not form.complete(r)), None)
        return render_template("review_form.html", form=form, rows=rows, resume=resume, separator=SEPARATOR,
                               **progress(rows))

    @app.post("/save")
    def save() -> tuple[Response, int]:
        body: dict[str, Any] = request.get_json(silent=True) or {}
        try:
            with lock:
                rows = save_entry(form, str(body.get("row", "")), str(body.get("column", "")),
                                  str(body.get("value", "")))
        except DataError as e:
            return jsonify(error=str(e)), 400
        return jsonify(saved=True, **progress(rows)), 200

    @app.get("/image/<key>")
    def image(key: str) -> Response:
        with lock:
            _, rows = read_rows(form)
        row = next((r for r in rows if r[form.key_column] == key), None)
        png = form.image(row) if row is not None else None
        return Response(status=404) if png is None else Response(png, mimetype="image/png")

    def left(rows: list[dict[str, str]]) -> str:
        n = len(rows) - sum(form.complete(r) for r in rows)
        return f"{n} of {len(rows)} entries are still unreviewed." if n else f"All {len(rows)}: every entry is reviewed."

    @app.post("/finish")
    def finish() -> Response:
        try:
            with lock:
                _, rows = read_rows(form)
                form.check()
        except DataError as e:
            return jsonify(ready=False, message=f"{left(rows)} {e}")
        return jsonify(ready=True, message=f"{left(rows)} Every entry made is saved in {form.sheet}. {form.done}")

    @app.errorhandler(DataError)
    def unreadable(e: DataError) -> tuple[str, int]:
        return str(e), 409

    return app


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a host other than loopback unless ``allow_remote``: the sheet shows frames and answers."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not allow_remote:
        raise ConfigError(f"host '{host}' would serve the review sheet, with its frames, beyond this machine. "
                          "Use 127.0.0.1, or allow it explicitly (allow_remote, --allow-remote).")


class FormServer:
    """The form's web server: ``run()`` until Ctrl-C, or ``with FormServer(...)`` in a background thread."""

    def __init__(self, form: SheetForm, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False):
        check_host(host, allow_remote)
        read_rows(form)  # a sheet the form cannot save into fails before anything is served
        self.form = form
        self._server: BaseWSGIServer = make_server(host, port, create_app(form), threaded=True)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self._server.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self._server.server_port}/"

    def run(self) -> None:
        """Serve until Ctrl-C (werkzeug's ``serve_forever`` ends on it and closes the socket)."""
        console.print(f"{self.form.title}: open {self.url} (entries are saved to {self.form.sheet} as they are "
                      "made; Ctrl-C stops the server)")
        self._server.serve_forever()
        console.print("server stopped; every entry made so far is saved")

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._server.serve_forever, name="review-form", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()  # serve_forever returns and closes the socket
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_S)


def serve(form: SheetForm, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False) -> Path:
    """Serve ``form`` until Ctrl-C; returns the sheet it saved into."""
    FormServer(form, host, port, allow_remote).run()
    return form.sheet
