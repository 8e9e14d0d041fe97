"""A tiny SMTP server on loopback for the provider tests: it keeps every message it was given."""

from __future__ import annotations

import socketserver
import ssl
import sys
import threading

import pytest


class _SmtpHandler(socketserver.StreamRequestHandler):
    """A tiny ESMTP server: EHLO, STARTTLS (when the server has a TLS context), AUTH, MAIL/RCPT/DATA."""

    def handle(self):
        tls = self.server.tls
        self.wfile.write(b"220 fake ESMTP\r\n")
        data_mode, lines = False, []
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            if data_mode:
                if line == ".":
                    data_mode = False
                    self.server.messages.append("\n".join(lines))
                    lines = []  # the next message on this connection starts afresh
                    if self.server.drop_after_data:  # took it, but the client never hears so
                        return
                    self.wfile.write(b"250 queued\r\n")
                else:
                    lines.append(line)
                continue
            verb = line.split(" ")[0].upper()
            if verb == "EHLO":
                starttls = b"250-STARTTLS\r\n" if tls and not isinstance(self.connection, ssl.SSLSocket) else b""
                self.wfile.write(b"250-fake\r\n" + starttls + b"250 AUTH PLAIN LOGIN\r\n")
            elif verb == "STARTTLS":
                self.wfile.write(b"220 go ahead\r\n")
                self.connection = tls.wrap_socket(self.connection, server_side=True)
                self.rfile = self.connection.makefile("rb")
                self.wfile = socketserver._SocketWriter(self.connection)
            elif verb == "AUTH":
                self.server.auth.append((line, isinstance(self.connection, ssl.SSLSocket)))
                self.wfile.write(b"235 ok\r\n")
            elif verb == "RCPT" and "reject" in line:
                self.wfile.write(b"550 no such user\r\n")
            elif verb == "MAIL" and self.server.busy:
                self.wfile.write(b"421 try again later\r\n")
            elif verb == "DATA":
                data_mode = True
                self.wfile.write(b"354 go\r\n")
            elif verb == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


class _SmtpServer(socketserver.ThreadingTCPServer):
    # A provider keeps its connection open between sends: closing the server must not wait for it.
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        # e.g. the client refusing our certificate: kept for the test to see, not printed
        self.errors.append(sys.exc_info()[1])


def serve_smtp(tls: ssl.SSLContext | None = None):
    server = _SmtpServer(("127.0.0.1", 0), _SmtpHandler)
    server.messages, server.auth, server.errors, server.tls = [], [], [], tls
    server.busy = False  # answer MAIL FROM with 421 (a failure before DATA)
    server.drop_after_data = False  # keep the message, close without the 250 (a failure after DATA)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def message_ids(server) -> list[str]:
    """The Message-ID of every message the server was given (``<delivery id@domain>``), in order."""
    return [line.split(":", 1)[1].strip() for message in list(server.messages) for line in message.splitlines()
            if line.lower().startswith("message-id:")]


@pytest.fixture
def smtp():
    """A fake SMTP server of one test's own."""
    server = serve_smtp()
    yield server
    server.shutdown()
    server.server_close()
