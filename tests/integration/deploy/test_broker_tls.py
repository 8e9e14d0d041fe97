"""``amqps://`` as documented in deploy/README.md: an amqps URL plus SSL_CERT_FILE for a private CA.

The local broker has no TLS listener, so the test puts a TLS endpoint (a small
proxy with a certificate from a throwaway CA) in front of the real RabbitMQ.
Both client libraries the services use are checked: pika (booking relay,
notification CLI) and kombu/py-amqp (Celery workers).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.parse

import pika
import pytest
from kombu import Connection
from kombu.exceptions import OperationalError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI needed to make a test CA")


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA and a server certificate for ``localhost`` signed by it."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "1", "-extfile", "san.ext", "-out", "server.pem", cwd=d)
    return d


class TLSProxy:
    """Terminates TLS on a loopback port and forwards the bytes to the plain AMQP listener."""

    def __init__(self, pki, upstream: tuple[str, int]):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki / "server.pem", pki / "server.key")
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()  # the client refused our certificate: exactly what a bad CA must cause
            return
        self.handshakes += 1
        server = socket.create_connection(self.upstream)
        threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
        self._pump(client, server)

    @staticmethod
    def _pump(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass  # the other direction closed the pair; closing below ends both pumps
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):  # already closed by the other pump
                    s.close()

    def close(self):
        self.listener.close()


@pytest.fixture
def amqps_url(vhost_url, pki):
    parts = urllib.parse.urlsplit(vhost_url)
    proxy = TLSProxy(pki, (parts.hostname, parts.port or 5672))
    netloc = f"{parts.username}:{parts.password}@localhost:{proxy.port}"
    yield urllib.parse.urlunsplit(("amqps", netloc, parts.path, "", "")), proxy
    proxy.close()


def test_pika_connects_over_amqps_trusting_the_ca_from_ssl_cert_file(amqps_url, pki, monkeypatch):
    url, proxy = amqps_url
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.pem"))
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = connection.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", queue, b"over tls")
        assert ch.basic_get(queue, auto_ack=True)[2] == b"over tls"
    finally:
        connection.close()
    assert proxy.handshakes == 1


def test_pika_refuses_a_broker_whose_ca_is_not_trusted(amqps_url, tmp_path, monkeypatch):
    url, proxy = amqps_url
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
    with pytest.raises((pika.exceptions.AMQPConnectionError, ssl.SSLError), match="CERTIFICATE_VERIFY_FAILED"):
        pika.BlockingConnection(pika.URLParameters(url + "?connection_attempts=1"))
    assert proxy.handshakes == 0


def test_pika_refuses_a_certificate_for_another_host_name(amqps_url, pki, monkeypatch):
    url, proxy = amqps_url
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.pem"))
    # Same endpoint, but addressed by IP: the certificate names only "localhost".
    with pytest.raises((pika.exceptions.AMQPConnectionError, ssl.SSLError), match="CERTIFICATE_VERIFY_FAILED"):
        by_ip = url.replace("@localhost:", "@127.0.0.1:")
        pika.BlockingConnection(pika.URLParameters(by_ip + "?connection_attempts=1"))


def test_kombu_connects_over_amqps_trusting_the_ca_from_ssl_cert_file(amqps_url, pki, monkeypatch):
    url, proxy = amqps_url
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.pem"))
    with Connection(url, connect_timeout=5) as connection:
        connection.ensure_connection(max_retries=1)
        with connection.SimpleQueue("tls-probe") as queue:
            queue.put({"over": "tls"})
            assert queue.get(timeout=5).payload == {"over": "tls"}
    assert proxy.handshakes >= 1


def test_kombu_refuses_a_broker_whose_ca_is_not_trusted(amqps_url, tmp_path, monkeypatch):
    url, proxy = amqps_url
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
    with (Connection(url, connect_timeout=5) as connection,
          pytest.raises(OperationalError, match="CERTIFICATE_VERIFY_FAILED")):
        connection.ensure_connection(max_retries=1)
    assert proxy.handshakes == 0


def test_worker_app_checks_the_broker_host_name_over_amqps(amqps_url, pki, monkeypatch):
    """The notification app's own broker settings verify the host name, which py-amqp skips by default."""
    from notification_service.settings import Settings
    from notification_service.worker.app import create_app

    url, proxy = amqps_url
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.pem"))
    good = create_app(Settings(amqp_url=url))
    with good.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
    by_ip = create_app(Settings(amqp_url=url.replace("@localhost:", "@127.0.0.1:")))
    with (by_ip.connection_for_write() as connection,
          pytest.raises(OperationalError, match="CERTIFICATE_VERIFY_FAILED|match")):
        connection.ensure_connection(max_retries=1)
