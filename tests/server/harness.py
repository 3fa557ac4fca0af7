"""Starting kvrt-server on a free port and talking to it with Python's
standard library only (http.client), for tests/server/*_test.py and
tools/kvrt-server-load.py."""
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import time
import urllib.parse


class Server:
    """A kvrt-server process on a free port (--port 0; the URL is read from its stdout)."""

    def __init__(self, exe, model, *args, env=None, ready_timeout=120, wrap=()):
        self.exe = exe
        cmd = [*wrap, exe, "-m", model, "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.url = self._read_url(ready_timeout)
        parsed = urllib.parse.urlparse(self.url)
        self.host, self.port = parsed.hostname, parsed.port
        self.stderr_text = None
        self.wait_ready(ready_timeout)

    def _read_url(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("http://"):
            self.proc.kill()
            err = self.proc.stderr.read().decode(errors="replace")
            raise RuntimeError("kvrt-server did not print its URL (stdout %r): %s" % (line, err))
        return line.strip()

    def wait_ready(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("kvrt-server exited %d: %s" % (self.proc.returncode,
                                                                 self.proc.stderr.read().decode(errors="replace")))
            try:
                status, _, _ = self.request("GET", "/health")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("kvrt-server not ready after %d s" % timeout)

    def conn(self, timeout=120):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=120):
        """(status, headers dict, body bytes); body may be bytes, str or a JSON-able object."""
        c = self.conn(timeout)
        h = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def post(self, path, body, headers=None, timeout=120):
        """(status, parsed JSON) of a POST."""
        status, _, data = self.request("POST", path, body, headers, timeout)
        return status, json.loads(data)

    def stream(self, path, body, headers=None, timeout=120):
        """(status, [event JSON ...], saw_done, raw text) of a streamed POST."""
        c = self.conn(timeout)
        h = {"Content-Type": "application/json", **(headers or {})}
        try:
            c.request("POST", path, body=json.dumps(body), headers=h)
            r = c.getresponse()
            if r.status != 200:
                return r.status, [json.loads(r.read())], False, ""
            events, done, raw = [], False, []
            for line in iter(r.readline, b""):
                text = line.decode()
                raw.append(text)
                if not text.startswith("data: "):
                    continue
                data = text[6:].strip()
                if data == "[DONE]":
                    done = True
                else:
                    if done:
                        raise AssertionError("an event after data: [DONE]")
                    events.append(json.loads(data))
            return r.status, events, done, "".join(raw)
        finally:
            c.close()

    def metrics(self):
        """{"name{labels}": value} of every sample, and {"name": value} for samples with only model_name."""
        status, headers, data = self.request("GET", "/metrics")
        if status != 200:
            raise AssertionError("GET /metrics: %d" % status)
        out = {}
        for line in data.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
            name, _, labels = key.partition("{")
            if labels.count("=") == 1:
                out[name] = float(value)
        return out

    def wait_metric(self, name, want, timeout=30):
        """Polls /metrics until name == want; returns the metrics."""
        deadline = time.time() + timeout
        while True:
            m = self.metrics()
            if m.get(name) == want or time.time() > deadline:
                return m
            time.sleep(0.05)

    def kill(self):
        """Ends a server a failed test left running (no-op once stopped)."""
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Signals the server; returns (exit code, stderr text)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("kvrt-server did not stop within %d s of %s" % (timeout, sig))
        self.stderr_text = self.proc.stderr.read().decode(errors="replace")
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, self.stderr_text


def open_stream(server, path, body, headers=None):
    """Starts a streamed POST and returns (connection, response) after the headers."""
    c = server.conn()
    c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **(headers or {})})
    return c, c.getresponse()


def drop(conn, resp):
    """Goes away abruptly, as a client that crashed or was closed."""
    sock = conn.sock
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    if resp is not None:
        resp.close()
    conn.close()


def stream_text(events, index=0, chat=False):
    """The text of choice `index` put together from streamed events, and its finish_reason."""
    text, finish = [], None
    for ev in events:
        for ch in ev.get("choices", []):
            if ch["index"] != index:
                continue
            piece = (ch.get("delta") or {}).get("content") if chat else ch.get("text")
            if piece:
                text.append(piece)
            if ch.get("finish_reason"):
                if finish is not None:
                    raise AssertionError("two finish_reasons for choice %d" % index)
                finish = ch["finish_reason"]
    return "".join(text), finish


def env_without_key():
    env = dict(os.environ)
    env.pop("KVRT_API_KEY", None)
    return env
