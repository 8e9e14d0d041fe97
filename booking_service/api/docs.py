"""/docs: a human page rendered from /openapi.json on the server; works offline."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template_string

blp = Blueprint("docs", __name__)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ spec.info.title }} {{ spec.info.version }}</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
code,pre{background:#f4f4f4;padding:.1rem .3rem}h2{border-top:1px solid #ddd;padding-top:1rem}
.m{display:inline-block;min-width:4.5rem;font-weight:bold}</style></head><body>
<h1>{{ spec.info.title }} <small>{{ spec.info.version }}</small></h1>
<p>Send <code>Authorization: Bearer &lt;key&gt;</code> on every <code>/v1</code> call.
Machine-readable: <a href="/openapi.json">/openapi.json</a>.</p>
{% for path, ops in spec.paths.items() %}{% for method, op in ops.items() if method != "parameters" %}
<h2><span class="m">{{ method.upper() }}</span> <code>{{ path }}</code></h2>
<p>{{ op.summary or "" }} {{ op.description or "" }}</p>
{% if op.parameters %}<p>Parameters: {% for p in op.parameters %}<code>{{ p.name }}</code> ({{ p["in"] }}) \
{% endfor %}</p>{% endif %}
<p>Responses: {% for code, r in op.responses.items() %}<code>{{ code }}</code> {{ r.description }}; {% endfor %}</p>
{% endfor %}{% endfor %}
<h2>Schemas</h2>
{% for name, schema in spec.components.schemas.items() %}<h3>{{ name }}</h3>
<pre>{{ schema | tojson(indent=2) }}</pre>{% endfor %}
</body></html>"""


@blp.get("/docs")
def docs():
    spec = current_app.extensions["flask-smorest"]["apis"][""]["ext_obj"].spec.to_dict()
    return render_template_string(PAGE, spec=spec)
