"""The baseline of ``bench_webhooks.py``: a Flask endpoint that reads the body, parses it and answers JSON."""

from __future__ import annotations

import json

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask("bare")

    @app.post("/webhooks/email/http")
    def event():
        json.loads(request.get_data())
        return jsonify({"status": "ok"})

    @app.get("/healthz")
    def health():
        return jsonify({"status": "ok"})

    return app
