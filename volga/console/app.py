"""The web console: server-rendered pages over a client (catalog, feature, live jobs, lookup)
and its Prometheus ``/metrics``.

``ConsoleApp(client, auth_token).handle(method, path, headers, body)`` answers one request
as ``(status, body, extra header lines)``, the feature server's response shape, so the
same object serves ``/ui`` on the feature server and in ``volga ui``/``volga run``. With a
token, a request needs ``Authorization: Bearer TOKEN`` or the ``volga_token`` cookie that
the sign-in form sets (``POST /ui/login``; browsers cannot send bearer headers on navigation).

>>> import tempfile, volga
>>> app = ConsoleApp(volga.Client(data_dir=tempfile.mkdtemp()), auth_token="s3cret")
>>> app.handle("GET", "/ui", {}, b"")[0], app.handle("GET", "/ui", {"authorization": "Bearer s3cret"}, b"")[0]
(401, 200)
"""

from __future__ import annotations

import datetime
import hmac
import time
from html import escape
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import polars as pl

from volga.catalog import CatalogEntry, catalog, definitions_of, find, source_code
from volga.console import svg
from volga.metrics import metrics_for
from volga.runtime.local.stage import NO_WM

Response = tuple[int, bytes, bytes]
HTML = b"Content-Type: text/html; charset=utf-8\r\n"
STATIC_TYPES = {"css": b"Content-Type: text/css\r\n", "js": b"Content-Type: application/javascript\r\n"}
SAMPLE_ROWS = 20


class ConsoleApp:
    def __init__(self, client: Any, auth_token: str | None = None) -> None:
        self.client = client
        self.token = auth_token
        self.metrics = metrics_for(client)
        self._rates: dict[int, tuple[float, int]] = {}  # id(job) -> (time, rows_in) at the last live page

    def routes(self) -> dict[str, Any]:
        """``extra_routes`` for the feature server: ``/ui`` and ``/metrics``."""
        return {"/ui": self.handle, "/metrics": self.handle}

    def server_hooks(self) -> dict[str, Any]:
        """Keyword arguments for ``serve_forever``/``serve_in_thread``: routes and request metrics."""
        return {"extra_routes": self.routes(), "observer": self.metrics.observe_request}

    def mount(self, server: Any) -> Any:
        """Add ``/ui`` and ``/metrics`` to a running feature server (``client.serve(...)``)."""
        server.app.extra_routes.update(self.routes())
        server.app.observer = self.metrics.observe_request
        return server

    # -- dispatch ------------------------------------------------------------------------
    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        url = urlsplit(path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        route = url.path.rstrip("/") or "/"
        if route == "/ui/login" and method == "POST":  # the token comes in the body, never in a URL
            form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
            return self._login(form.get("token", ""))
        if method != "GET":
            return 405, b"method not allowed: the console answers GET (and POST /ui/login)", b"Content-Type: text/plain\r\nAllow: GET\r\n"
        if route.startswith("/ui/static/"):
            return self._static(route.rsplit("/", 1)[1])
        if not self._authorized(headers):
            return 401, _page("Sign in", _login_form(), ""), HTML
        if route == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return 200, generate_latest(self.metrics.registry), f"Content-Type: {CONTENT_TYPE_LATEST}\r\n".encode()
        try:
            if route in ("/ui", "/"):
                return 200, self.catalog_page(query.get("q", "")), HTML
            if route.startswith("/ui/feature/"):
                return 200, self.feature_page(route[len("/ui/feature/"):], query), HTML
            if route == "/ui/job":
                if query.get("fragment"):
                    return 200, self.jobs_fragment().encode(), HTML
                return 200, _page("Live jobs", f'<div id="live" data-src="/ui/job?fragment=1">{self.jobs_fragment()}</div>', "job"), HTML
            if route == "/ui/lookup":
                return 200, self.lookup_page(query), HTML
        except KeyError as e:
            return 404, _page("Not found", f'<p class="error">{escape(str(e.args[0]))}</p>', ""), HTML
        return 404, _page("Not found", f'<p class="error">no page {escape(route)}</p>', ""), HTML

    def _authorized(self, headers: dict[str, str]) -> bool:
        if not self.token:
            return True
        given = headers.get("authorization", "")
        if given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), self.token.encode()):
            return True
        cookies = dict(part.strip().split("=", 1) for part in headers.get("cookie", "").split(";") if "=" in part)
        return hmac.compare_digest(cookies.get("volga_token", "").encode(), self.token.encode())

    def _login(self, token: str) -> Response:
        if self.token and not hmac.compare_digest(token.encode(), self.token.encode()):
            return 401, _page("Sign in", '<p class="error">wrong token</p>' + _login_form(), ""), HTML
        cookie = f"Set-Cookie: volga_token={quote(token)}; Path=/; HttpOnly; SameSite=Strict\r\n" if self.token else ""
        return 303, b"", f"Content-Type: text/plain\r\nLocation: /ui\r\n{cookie}".encode()

    @staticmethod
    def _static(name: str) -> Response:
        kind = name.rsplit(".", 1)[-1]
        if kind not in STATIC_TYPES or "/" in name:
            return 404, b"no such asset", b"Content-Type: text/plain\r\n"
        try:
            data = resources.files("volga.console").joinpath("static").joinpath(name).read_bytes()
        except FileNotFoundError:
            return 404, b"no such asset", b"Content-Type: text/plain\r\n"
        return 200, data, STATIC_TYPES[kind]

    # -- pages ---------------------------------------------------------------------------
    def catalog_page(self, q: str = "") -> bytes:
        entries = catalog(self.client)
        rows = []
        for e in entries:
            search = " ".join([e.name, e.kind, e.entity, e.description, e.owner or "", *e.tags, *(f.name for f in e.fields)])
            hidden = "" if not q or e.matches(q) else ' style="display:none"'
            rows.append(
                f'<tr data-search="{escape(search.lower())}"{hidden}><td><a href="/ui/feature/{escape(e.name)}">{escape(e.name)}</a></td>'
                f'<td><span class="kind">{e.kind}</span></td><td>{escape(e.entity)}</td><td>{escape(", ".join(e.keys))}</td>'
                f"<td>{_tags(e.tags)}</td><td>{escape(e.owner or '')}</td><td>{escape(_first_line(e.description))}</td></tr>"
            )
        upstream = {e.name: e.upstream for e in entries}
        kinds = {e.name: e.kind for e in entries}
        body = (
            f'<p><input id="search" type="search" placeholder="search names, fields, tags, owners" value="{escape(q)}" '
            f'autofocus> <span class="muted"><span id="shown">{len(entries)}</span> of {len(entries)} shown</span></p>'
            "<table id=\"catalog\"><tr><th>name</th><th>kind</th><th>entity</th><th>keys</th><th>tags</th><th>owner</th>"
            f"<th>description</th></tr>{''.join(rows)}</table>"
            f"<h2>Lineage</h2>{svg.lineage(upstream, kinds)}"
        )
        return _page("Feature catalog", body, "catalog")

    def feature_page(self, name: str, query: dict[str, str]) -> bytes:
        entry = find(self.client, name)
        defs = definitions_of(self.client)
        related = _related(entry.name, {e.name: e for e in catalog(self.client)})
        fields = "".join(
            f"<tr><td>{escape(f.name)}</td><td>{escape(f.type)}</td><td>{'key' if f.key else ('timestamp' if f.timestamp else '')}</td></tr>"
            for f in entry.fields
        )
        parts = [
            f'<p><span class="kind">{entry.kind}</span> {_tags(entry.tags)} '
            f'{("owner <b>" + escape(entry.owner) + "</b>") if entry.owner else ""}</p>',
            f'<p class="description">{escape(entry.description) or "<span class=muted>no docstring</span>"}</p>',
            f"<h2>Schema: {escape(entry.entity)}</h2><table id=\"schema\"><tr><th>field</th><th>type</th><th></th></tr>{fields}</table>",
        ]
        if entry.windows or entry.details:
            items = "".join(f"<li>{escape(w)}</li>" for w in entry.windows + entry.details)
            parts.append(f"<h2>Definition</h2><ul>{items}</ul>")
        parts.append(f"<h2>Lineage</h2>{svg.lineage(related, {e.name: e.kind for e in catalog(self.client)}, entry.name)}")
        if entry.kind == "pipeline":
            parts.append(self._offline_section(entry, query))
        elif entry.kind == "on_demand":
            parts.append(f'<p><a href="/ui/lookup?feature={quote(entry.name)}">compute it for a key</a></p>')
        parts.append(f'<h2>Source</h2><p class="muted">{escape(entry.location)}</p><pre>{escape(source_code(defs[entry.name]))}</pre>')
        return _page(entry.name, "".join(parts), "catalog")

    def _offline_section(self, entry: CatalogEntry, query: dict[str, str]) -> str:
        rows = self.client.offline_store.read(entry.name)
        if rows is None or rows.height == 0:
            return (f'<h2>Offline rows</h2><p class="muted">none stored yet: run <code>volga materialize app.py '
                    f"--pipelines {escape(entry.name)}</code></p>")
        sample = rows.tail(SAMPLE_ROWS)
        table = (f"<h2>Offline rows</h2><p class=\"muted\">{rows.height:,} rows stored; the last {sample.height}:</p>"
                 + _table(sample, "offline-rows"))
        out: list[str] = []
        numeric = [f.name for f in entry.fields if not f.key and not f.timestamp and f.type in ("int", "float")]
        if not numeric:
            return table
        plot_field = query.get("field") if query.get("field") in numeric else numeric[0]
        key = {k: query.get(f"key.{k}") or str(sample[k][-1]) for k in entry.keys}
        chosen = rows
        for k, value in key.items():
            chosen = chosen.filter(pl.col(k).cast(pl.String) == value)
        chosen = chosen.sort(entry.timestamp)
        options = "".join(f'<option{" selected" if f == plot_field else ""}>{escape(f)}</option>' for f in numeric)
        key_inputs = "".join(f'<label>{escape(k)} <input name="key.{escape(k)}" value="{escape(v)}"></label> ' for k, v in key.items())
        out.append(
            f'<h2>Over time</h2><form id="plot-form">field <select name="field">{options}</select> {key_inputs}'
            '<button type="submit">plot</button></form>'
        )
        if chosen.height == 0:
            out.append(f'<p class="error">no offline rows for {escape(str(key))}</p>')
        else:
            times = chosen[entry.timestamp].dt.epoch("us").to_list()
            values = [None if v is None else float(v) for v in chosen[plot_field].to_list()]
            label = f"{plot_field} for {', '.join(f'{k}={v}' for k, v in key.items())}"
            out.append(svg.time_series(times, values, label))
        return "".join(out) + table

    def jobs_fragment(self) -> str:
        jobs = list(self.client.jobs)
        if not jobs:
            return ('<p class="muted">no job has run in this process. <code>volga run app.py --metrics-port 9108</code> '
                    "runs the online job and serves this page on that port.</p>")
        freshness = {n: (time.time_ns() // 1000 - us) / 1e6 for n, us in self.metrics.newest_written_us.items()}
        return "".join(self._job_section(job, freshness) for job in reversed(jobs))

    def _job_section(self, job: Any, freshness: dict[str, float]) -> str:
        now, rows_in = time.perf_counter(), sum(job.metrics.rows_in.values())
        then, rows_then = self._rates.get(id(job), (job.metrics.started_at, 0))
        self._rates[id(job)] = (now, rows_in)
        rate = (rows_in - rows_then) / (now - then) if job.running and now > then else rows_in / max(job.metrics.seconds, 1e-9)
        state = "running" if job.running else ("failed: " + str(job.error) if job.error else "finished")
        rejected = job.rejected
        cards = [("state", state), ("rows in", f"{rows_in:,}"), ("rows/s", f"{rate:,.0f}"),
                 ("rows out", f"{sum(job.metrics.rows_out.values()):,}"), ("late", f"{sum(job.metrics.late.values()):,}"),
                 ("rejected", f"{len(rejected):,}")]
        for name in job.pipelines:
            if name in freshness:
                cards.append((f"freshness {name}", f"{freshness[name]:,.1f}s"))
        now_us = time.time_ns() // 1000
        stages = getattr(job, "_stages", {})  # the embedded runtime's sources (a Ray job has none here)
        for name, stage in stages.items():
            if job.running and stage.max_seen != NO_WM:
                cards.append((f"lag {name}", f"{(now_us - stage.max_seen) / 1e6:,.1f}s"))
        html = [f'<section class="job"><h2>{job.mode} job: {escape(", ".join(job.pipelines))}</h2><div class="cards">']
        html += [f'<div class="card" data-metric="{escape(label)}">{escape(label)}<b>{escape(value)}</b></div>' for label, value in cards]
        html.append("</div>")
        for name in stages:
            late = job.late_events(name)
            if late.height:
                html.append(f"<h3>Late rows of {escape(name)} (last 5 of {late.height:,})</h3>{_table(late.tail(5), 'late-rows')}")
        if rejected:
            items = "".join(f"<tr><td>{escape(r.source)}</td><td>{escape(r.reason)}</td><td><code>{escape(repr(r.record)[:200])}</code></td></tr>"
                            for r in rejected[-5:])
            html.append(f'<h3>Rejected rows (last {min(5, len(rejected))} of {len(rejected):,})</h3><table class="rejected">'
                        f"<tr><th>where</th><th>reason</th><th>record</th></tr>{items}</table>")
        html.append("</section>")
        return "".join(html)

    def lookup_page(self, query: dict[str, str]) -> bytes:
        entries = [e for e in catalog(self.client) if e.kind in ("pipeline", "on_demand")]
        if not entries:
            return _page("Lookup", '<p class="muted">no pipelines or on-demand features defined</p>', "lookup")
        chosen = next((e for e in entries if e.name == query.get("feature")), entries[0])
        options = "".join(f'<option{" selected" if e is chosen else ""}>{escape(e.name)}</option>' for e in entries)
        types = {f.name: f.type for f in chosen.fields}
        inputs = "".join(
            f'<label>{escape(k)} ({escape(types[k])}) <input name="key.{escape(k)}" value="{escape(query.get("key." + k, ""))}"></label> '
            for k in chosen.keys
        )
        parts = [f'<form id="lookup-form" method="get"><p>feature <select id="feature-select" name="feature">{options}</select></p>'
                 f"<p>{inputs}<button type=\"submit\">look up</button></p></form>"]
        if all(query.get(f"key.{k}") for k in chosen.keys) and chosen.keys:
            try:
                key = {k: _parse(query[f"key.{k}"], types[k]) for k in chosen.keys}
                (row,) = self.client.get_on_demand(chosen.name, [key])
                if row is None:
                    parts.append(f'<p id="lookup-result" class="muted">no value for {escape(str(key))}</p>')
                else:
                    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(_show(v))}</td></tr>" for k, v in dict(row).items())
                    parts.append(f'<h2>{escape(chosen.name)} for {escape(str(key))}</h2><table id="lookup-result">{cells}</table>')
            except Exception as e:  # bad key input or a function that raised: show why, keep serving
                parts.append(f'<p id="lookup-result" class="error">{escape(type(e).__name__)}: {escape(str(e))}</p>')
        return _page("Lookup", "".join(parts), "lookup")


# -- helpers -------------------------------------------------------------------------------
def _page(title: str, body: str, active: str) -> bytes:
    nav = "".join(
        f'<a href="{href}"{" class=active" if key == active else ""}>{label}</a>'
        for key, href, label in (("catalog", "/ui", "Catalog"), ("job", "/ui/job", "Live jobs"), ("lookup", "/ui/lookup", "Lookup"))
    )
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)} · Volga</title><link rel=\"stylesheet\" href=\"/ui/static/console.css\"></head>"
        f'<body><header><a class="brand" href="/ui">Volga</a>{nav}</header><main><h1>{escape(title)}</h1>{body}</main>'
        '<script src="/ui/static/console.js"></script></body></html>'
    ).encode()


def _login_form() -> str:
    return ('<form action="/ui/login" method="post"><p>This server needs its auth token.</p>'
            '<input name="token" type="password" placeholder="token"> <button type="submit">sign in</button></form>')


def _tags(tags: list[str]) -> str:
    return "".join(f'<span class="tag">{escape(t)}</span>' for t in tags)


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0] if text else ""


def _table(frame: pl.DataFrame, css_id: str) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(_show(v))}</td>" for v in row) + "</tr>" for row in frame.iter_rows())
    return f'<table class="{css_id}"><tr>{head}</tr>{body}</table>'


def _show(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def _parse(text: str, type_name: str) -> Any:
    """A key typed into the form, as its field's type (the error names the value)."""
    try:
        if type_name == "int":
            return int(text)
        if type_name == "float":
            return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid {type_name}") from None
    if type_name == "bool":
        return text.lower() in ("1", "true", "yes")
    return text


def _related(name: str, entries: dict[str, CatalogEntry]) -> dict[str, list[str]]:
    """The part of the lineage graph connected to ``name``: its ancestors and descendants."""
    keep = {name}
    stack = [name]
    while stack:  # ancestors
        for up in entries[stack.pop()].upstream:
            if up not in keep:
                keep.add(up)
                stack.append(up)
    stack = [name]
    down: set[str] = set()
    while stack:  # descendants
        for d in entries[stack.pop()].downstream:
            if d not in down:
                down.add(d)
                stack.append(d)
    keep |= down
    return {n: [u for u in entries[n].upstream if u in keep] for n in keep}
