#!/usr/bin/env python3
"""The chat page at / in a real browser: Debian's chromium, headless, driven
through chromedriver's WebDriver HTTP API with Python's standard library.

A two-turn conversation streams into the page (the text grows in several
steps, and each reply equals the API's answer for the same conversation),
and the Stop button cancels a generation on the server (its blocks are
back in /metrics).

Usage: browser_test.py BUILD_DIR SOURCE_DIR
"""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

BUILD, SRC = sys.argv[1], sys.argv[2]
EXE = os.path.join(BUILD, "kvrt-server")
MODEL = os.path.join(os.environ.get("KVRT_TEST_MODELS", os.path.join(SRC, "models")), "stories260K.gguf")
CHROMIUM = os.environ.get("KVRT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("KVRT_CHROMEDRIVER", "/usr/bin/chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver element reference key


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """The few W3C WebDriver commands the test needs, over http.client."""

    def __init__(self, port, profile):
        self.port = port
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--user-data-dir=" + profile]}}}}
        self.session = self.cmd("POST", "/session", caps)["sessionId"]

    def cmd(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            c.request(method, path, body=json.dumps(body) if body is not None else None,
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            data = json.loads(r.read() or b"{}")
        finally:
            c.close()
        if r.status != 200:
            raise RuntimeError("WebDriver %s %s: %d %s" % (method, path, r.status, data))
        return data.get("value")

    def s(self, method, path, body=None):
        return self.cmd(method, "/session/%s%s" % (self.session, path), body)

    def get(self, url):
        self.s("POST", "/url", {"url": url})

    def find(self, css):
        found = self.s("POST", "/element", {"using": "css selector", "value": css})
        if ELEMENT not in found:
            raise RuntimeError("WebDriver: no element %s (%s)" % (css, found))
        return found[ELEMENT]

    def click(self, css):
        self.s("POST", "/element/%s/click" % self.find(css), {})

    def type(self, css, text, clear=True):
        el = self.find(css)
        if clear:
            self.s("POST", "/element/%s/clear" % el, {})
        self.s("POST", "/element/%s/value" % el, {"text": text})

    def js(self, script, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait(self, script, timeout=60, what="condition"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.js(script)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError("timed out waiting for " + what)

    def quit(self):
        try:
            self.s("DELETE", "")
        except Exception:
            pass


# Records every length the last assistant message's text takes, so the test
# sees the reply arrive in pieces (streaming), not all at once.
WATCH = """
window.__lengths = [];
const box = document.getElementById('messages');
new MutationObserver(() => {
  const all = box.querySelectorAll('.msg.assistant .content');
  if (all.length) window.__lengths.push(all[all.length - 1].textContent.length);
}).observe(box, {subtree: true, childList: true, characterData: true});
"""

LAST = "const m = document.querySelectorAll('.msg.assistant'); return m.length ? m[m.length - 1] : null;"


def last_reply(wd):
    return wd.js("const m = document.querySelectorAll('.msg.assistant');"
                 "const e = m[m.length - 1];"
                 "return {finish: e.dataset.finish, text: e.querySelector('.content').textContent,"
                 "        meta: (e.querySelector('.meta') || {}).textContent, n: m.length};")


def turn(wd, text, n_before):
    wd.js(WATCH)
    wd.type("#input", text)
    wd.click("#send")
    wd.wait("const m = document.querySelectorAll('.msg.assistant');"
            "return m.length > %d && m[m.length - 1].dataset.finish !== undefined;" % n_before,
            what="the reply to " + repr(text))
    return last_reply(wd), wd.js("return window.__lengths;")


def main():
    for path in (CHROMIUM, CHROMEDRIVER, MODEL):
        if not os.path.exists(path):
            print("FAIL: %s is missing (chromium and chromium-driver are in tools/install-deps.sh)" % path)
            return 1
    profile = tempfile.mkdtemp(prefix="kvrt-chromium-")
    srv = harness.Server(EXE, MODEL, "-t", "1", "--ctx", "2048", "--max-seqs", "4", env=harness.env_without_key())
    port = free_port()
    driver = subprocess.Popen([CHROMEDRIVER, "--port=%d" % port], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wd = None
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)
            print("FAIL:", what)

    try:
        deadline = time.time() + 30
        while True:
            try:
                wd = WebDriver(port, profile)
                break
            except (OSError, RuntimeError):
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        wd.get(srv.url)
        wd.wait("return document.getElementById('status').textContent.includes('stories260K');", what="the status")
        wd.type("#temperature", "0")
        # long enough (~0.1-0.5 s) to arrive in several reads: this model writes thousands of tokens per second
        wd.type("#max-tokens", "300")
        wd.type("#extra", '{"ignore_eos": true}')

        # two turns of a conversation, each equal to the API's greedy answer for the whole conversation
        history = []
        n = 0
        for text in ("Tell me a story about a cat.", "What happened next?"):
            reply, lengths = turn(wd, text, n)
            n += 1
            history.append({"role": "user", "content": text})
            status, api = srv.post("/v1/chat/completions", {"messages": history, "max_tokens": 300,
                                                            "temperature": 0, "ignore_eos": True})
            check(status == 200, "the API answers the same conversation")
            want = api["choices"][0]["message"]["content"]
            history.append({"role": "assistant", "content": want})
            check(reply["text"] == want, "turn %d: the page shows %r, the API says %r" % (n, reply["text"], want))
            check(reply["finish"] in ("stop", "length"), "turn %d finished (%r)" % (n, reply["finish"]))
            distinct = sorted(set(lengths))
            check(len(distinct) >= 3 and distinct[-1] == len(want),
                  "turn %d streamed in pieces (text lengths seen: %s)" % (n, distinct[:20]))
            check("tokens" in (reply["meta"] or ""), "turn %d shows its token count (%r)" % (n, reply["meta"]))

        # New chat empties the conversation
        wd.click("#clear")
        check(wd.js("return document.querySelectorAll('.msg').length;") == 0, "New chat empties the page")
        n = 0
        # Stop: a long generation, stopped once its first words are on the page
        before = srv.wait_metric("kvrt:kv_cache_blocks_used", 0)
        wd.type("#max-tokens", "1500")
        wd.js(WATCH + """
new MutationObserver((changes, obs) => {
  const all = document.querySelectorAll('.msg.assistant .content');
  if (all.length > %d && all[all.length - 1].textContent.length > 0) {
    obs.disconnect();
    document.getElementById('stop').click();
  }
}).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
""" % n)
        wd.type("#input", "Tell me a very long story.")
        wd.click("#send")
        wd.wait("const m = document.querySelectorAll('.msg.assistant');"
                "return m.length > %d && m[m.length - 1].dataset.finish !== undefined;" % n, what="the stop")
        reply = last_reply(wd)
        check(reply["finish"] == "stopped", "the stopped reply says so (%r)" % reply["finish"])
        check(0 < len(reply["text"]) < 1500 * 4, "some text arrived before the stop")
        after = srv.wait_metric("kvrt:kv_cache_blocks_used", 0)
        check(after["kvrt:kv_cache_blocks_used"] == 0, "the stopped request's blocks are back")
        check(after["kvrt:num_requests_cancelled_total"] == before["kvrt:num_requests_cancelled_total"] + 1,
              "the server cancelled the stopped request")
        check(wd.js("return document.getElementById('send').disabled;") is False, "Send is enabled again")
        # no errors anywhere in the page
        errors = wd.js("return [...document.querySelectorAll('.msg.error')].map(e => e.textContent);")
        check(errors == [], "no error replies: %s" % errors)
    finally:
        if wd:
            wd.quit()
        driver.terminate()
        driver.wait(30)
        code, err = srv.stop()
        if code != 0:
            failures.append("kvrt-server exited %d: %s" % (code, err))
        shutil.rmtree(profile, ignore_errors=True)
    if failures:
        print("%d failures" % len(failures))
        return 1
    print("browser_test: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
