"""The users and permissions definitions.json commits, read from the file."""

from __future__ import annotations


def test_file_defines_both_service_users_for_vhost_root(definitions):
    users = {u["name"]: u for u in definitions["users"]}
    for name in ("booking", "notification"):
        assert name in users
        assert "administrator" not in str(users[name].get("tags", "")), f"{name} must not be an administrator"
        assert [p for p in definitions["permissions"] if p["user"] == name and p["vhost"] == "/"]
