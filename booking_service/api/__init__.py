"""HTTP layer: flask-smorest blueprints, HTTP schemas, auth and the one error shape."""
