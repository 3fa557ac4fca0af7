#!/usr/bin/env python3
"""kvrt-server driven as clients drive it: Python's http.client and curl.

Every endpoint, streaming, stop strings, n > 1, log-probabilities, chat,
cancellation when a client disconnects (its KV blocks back in /metrics),
every kind of bad input with its status and OpenAI-style error, the API key,
the queue limit, the body limit, and a clean stop on SIGTERM / SIGINT with
requests in flight.

Usage: api_test.py BUILD_DIR SOURCE_DIR [unittest args]
"""
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

BUILD, SRC = sys.argv[1], sys.argv[2]
EXE = os.path.join(BUILD, "kvrt-server")
MODEL = os.path.join(os.environ.get("KVRT_TEST_MODELS", os.path.join(SRC, "models")), "stories260K.gguf")
KEY = "sekrit-0123456789"
# one CPU thread: the model is tiny, and a pool of threads on a busy 2-core machine only waits
COMMON = ["-t", "1", "--ctx", "2048"]

S = None   # the main server
L = None   # a server with an API key and tight limits


def setUpModule():
    global S, L
    if not os.path.isfile(MODEL):
        raise RuntimeError("no model at %s" % MODEL)
    env = harness.env_without_key()
    S = harness.Server(EXE, MODEL, *COMMON, "--max-seqs", "8", env=env)
    L = harness.Server(EXE, MODEL, *COMMON, "--max-seqs", "1", "--max-queue", "0", "--max-body", "4k",
                       "--api-key", KEY, env=env)


def tearDownModule():
    for srv in (S, L):
        if srv and srv.proc.poll() is None:
            code, err = srv.stop()
            if code != 0:
                raise AssertionError("kvrt-server exited %d on SIGTERM: %s" % (code, err))


def kvrt_run(prompt, n):
    """kvrt-run's greedy text for the prompt (stdout: prompt + generation + newline)."""
    out = subprocess.run([os.path.join(BUILD, "kvrt-run"), "-m", MODEL, "-p", prompt, "-n", str(n), "--temp", "0",
                          "-t", "1"], capture_output=True, check=True).stdout.decode()
    assert out.startswith(prompt) and out.endswith("\n"), out
    return out[len(prompt):-1]


def count_tokens(text):
    out = subprocess.run([os.path.join(BUILD, "kvrt-tokenize"), "-m", MODEL, "-p", text], capture_output=True,
                         check=True).stdout.decode()
    return len(out.split())


class Endpoints(unittest.TestCase):
    def test_health_models_page(self):
        self.assertTrue(S.url.startswith("http://127.0.0.1:"), "binds to 127.0.0.1 unless told otherwise")
        status, headers, body = S.request("GET", "/health")
        self.assertEqual((status, json.loads(body)), (200, {"status": "ok"}))
        status, headers, body = S.request("GET", "/v1/models")
        self.assertEqual(status, 200)
        models = json.loads(body)
        self.assertEqual(models["object"], "list")
        self.assertEqual([m["id"] for m in models["data"]], ["stories260K"])
        self.assertEqual(models["data"][0]["max_model_len"], 2048)
        status, headers, body = S.request("GET", "/")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/html"))
        page = body.decode()
        self.assertIn("/v1/chat/completions", page)
        self.assertIsNone(re.search(r"(src|href)=\"(https?:)?//", page), "the page loads nothing from elsewhere")

    def test_greedy_completion_equals_kvrt_run(self):
        prompt = "Once upon a time"
        want = kvrt_run(prompt, 40)
        status, r = S.post("/v1/completions", {"model": "stories260K", "prompt": prompt, "max_tokens": 40,
                                               "temperature": 0})
        self.assertEqual(status, 200, r)
        self.assertEqual(r["object"], "text_completion")
        self.assertTrue(r["id"].startswith("cmpl-"))
        self.assertEqual(r["model"], "stories260K")
        self.assertEqual(len(r["choices"]), 1)
        self.assertEqual(r["choices"][0]["text"], want)
        self.assertIn(r["choices"][0]["finish_reason"], ("length", "stop"))
        u = r["usage"]
        self.assertEqual(u["prompt_tokens"], count_tokens(prompt))
        self.assertEqual(u["total_tokens"], u["prompt_tokens"] + u["completion_tokens"])
        self.assertLessEqual(u["completion_tokens"], 40)
        self.assertIn("cached_tokens", u["prompt_tokens_details"])

    def test_prompt_as_token_ids_and_length_finish(self):
        status, r = S.post("/v1/completions", {"prompt": [1, 403, 407, 261, 378], "max_tokens": 7,
                                               "temperature": 0, "ignore_eos": True})
        self.assertEqual(status, 200, r)
        self.assertEqual(r["usage"]["prompt_tokens"], 5)
        self.assertEqual(r["usage"]["completion_tokens"], 7)
        self.assertEqual(r["choices"][0]["finish_reason"], "length")
        _, text = S.post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 7, "temperature": 0,
                                             "ignore_eos": True})
        self.assertEqual(r["choices"][0]["text"], text["choices"][0]["text"], "ids and text give the same tokens")

    def test_stream_equals_whole(self):
        body = {"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0}
        _, whole = S.post("/v1/completions", body)
        status, events, done, raw = S.stream("/v1/completions", {**body, "stream": True,
                                                                  "stream_options": {"include_usage": True}})
        self.assertEqual(status, 200)
        self.assertTrue(done, "the stream ends with data: [DONE]")
        self.assertTrue(raw.endswith("data: [DONE]\n\n"))
        self.assertGreater(len(events), 3, "text arrives in pieces")
        text, finish = harness.stream_text(events)
        self.assertEqual(text, whole["choices"][0]["text"])
        self.assertEqual(finish, whole["choices"][0]["finish_reason"])
        ids = {ev["id"] for ev in events}
        self.assertEqual(len(ids), 1, "one id for every chunk")
        self.assertEqual(events[-1]["choices"], [])
        self.assertEqual(events[-1]["usage"]["completion_tokens"], whole["usage"]["completion_tokens"])
        for ev in events[:-1]:
            self.assertIsNone(ev["usage"])
            self.assertEqual(ev["object"], "text_completion")

    def test_stop_strings(self):
        # " girl" is three tokens here (" g", "ir", "l"): the stop matches across token boundaries
        body = {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0}
        _, full = S.post("/v1/completions", body)
        text = full["choices"][0]["text"]
        self.assertIn(" girl", text)
        for stop in (" girl", [" nothing here", " girl"]):
            status, r = S.post("/v1/completions", {**body, "stop": stop})
            self.assertEqual(status, 200, r)
            self.assertEqual(r["choices"][0]["text"], text[:text.index(" girl")])
            self.assertEqual(r["choices"][0]["finish_reason"], "stop")
            status, events, done, _ = S.stream("/v1/completions", {**body, "stop": stop, "stream": True})
            self.assertEqual(harness.stream_text(events), (text[:text.index(" girl")], "stop"))

    def test_n_samples_seeded(self):
        body = {"prompt": "One day", "max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "top_k": 40,
                "min_p": 0.02, "seed": 1234, "n": 3}
        status, a = S.post("/v1/completions", body)
        self.assertEqual(status, 200, a)
        self.assertEqual([c["index"] for c in a["choices"]], [0, 1, 2])
        texts = [c["text"] for c in a["choices"]]
        self.assertGreater(len(set(texts)), 1, "three samples differ")
        _, b = S.post("/v1/completions", body)
        self.assertEqual([c["text"] for c in b["choices"]], texts, "the same seed gives the same samples")
        self.assertEqual(a["usage"], b["usage"])
        self.assertLessEqual(a["usage"]["completion_tokens"], 3 * 24)
        status, events, done, _ = S.stream("/v1/completions", {**body, "stream": True})
        self.assertTrue(done)
        self.assertEqual([harness.stream_text(events, i)[0] for i in range(3)], texts)

    def test_logprobs(self):
        status, r = S.post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 10, "temperature": 0,
                                               "logprobs": 0, "ignore_eos": True})
        self.assertEqual(status, 200, r)
        lp = r["choices"][0]["logprobs"]
        self.assertEqual(len(lp["tokens"]), 10)
        self.assertEqual(len(lp["token_logprobs"]), 10)
        self.assertTrue(all(x <= 0 for x in lp["token_logprobs"]))
        self.assertEqual("".join(lp["tokens"]), r["choices"][0]["text"])
        self.assertEqual(lp["text_offset"][0], 0)
        status, events, _, _ = S.stream("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 10,
                                                            "temperature": 0, "logprobs": 0, "ignore_eos": True,
                                                            "stream": True})
        streamed = [x for ev in events for ch in ev["choices"] if ch["logprobs"]
                    for x in ch["logprobs"]["token_logprobs"]]
        self.assertEqual(streamed, lp["token_logprobs"])
        status, r = S.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                    "max_tokens": 5, "temperature": 0, "logprobs": True,
                                                    "ignore_eos": True})
        self.assertEqual(status, 200, r)
        content = r["choices"][0]["logprobs"]["content"]
        self.assertEqual(len(content), 5)
        self.assertEqual(list(bytes(content[0]["token"], "utf-8")), content[0]["bytes"])

    def test_prefix_cache_hits_in_usage(self):
        prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside. " * 2
        body = {"prompt": prompt, "max_tokens": 4, "temperature": 0}
        _, first = S.post("/v1/completions", body)
        _, second = S.post("/v1/completions", body)
        n = first["usage"]["prompt_tokens"]
        self.assertGreaterEqual(n, 33)
        cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        self.assertGreaterEqual(cached, 16 * ((n - 1) // 16) - 16, "the second request reuses the first's blocks")
        self.assertEqual(first["choices"][0]["text"], second["choices"][0]["text"])

    def test_chat(self):
        msgs = [{"role": "system", "content": "You tell stories."},
                {"role": "user", "content": [{"type": "text", "text": "Tell me a story"}]}]
        status, r = S.post("/v1/chat/completions", {"model": "stories260K", "messages": msgs, "max_tokens": 24,
                                                    "temperature": 0})
        self.assertEqual(status, 200, r)
        self.assertEqual(r["object"], "chat.completion")
        self.assertTrue(r["id"].startswith("chatcmpl-"))
        msg = r["choices"][0]["message"]
        self.assertEqual(msg["role"], "assistant")
        self.assertTrue(msg["content"])
        status, events, done, _ = S.stream("/v1/chat/completions", {"messages": msgs, "max_tokens": 24,
                                                                    "temperature": 0, "stream": True})
        self.assertTrue(done)
        self.assertEqual(events[0]["object"], "chat.completion.chunk")
        self.assertEqual(events[0]["choices"][0]["delta"]["role"], "assistant")
        self.assertEqual(harness.stream_text(events, chat=True),
                         (msg["content"], r["choices"][0]["finish_reason"]))

    def test_metrics_format(self):
        status, headers, body = S.request("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))
        text = body.decode()
        types = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                types[name] = kind
            elif line and not line.startswith("#"):
                self.assertRegex(line, r'^kvrt:[a-z0-9_]+(_bucket|_sum|_count)?\{model_name="stories260K"'
                                       r'(,[a-z_]+="[^"]*")?\} [-0-9.e+]+$')
        for name in ("kvrt:kv_cache_usage_perc", "kvrt:kv_cache_blocks_used", "kvrt:kv_cache_blocks_free",
                     "kvrt:kv_cache_blocks_cached", "kvrt:prefix_cache_hit_rate", "kvrt:num_preemptions_total",
                     "kvrt:num_requests_running", "kvrt:num_requests_waiting",
                     "kvrt:avg_generation_throughput_toks_per_s"):
            self.assertIn(name, types)
        for h in ("kvrt:time_to_first_token_seconds", "kvrt:time_per_output_token_seconds"):
            self.assertEqual(types[h], "histogram")
            buckets = [float(v) for v in re.findall(re.escape(h) + r'_bucket\{[^}]*\} (\S+)', text)]
            self.assertEqual(buckets, sorted(buckets), "cumulative buckets")
            count = float(re.search(re.escape(h) + r'_count\{[^}]*\} (\S+)', text).group(1))
            self.assertEqual(buckets[-1], count)
        S.post("/v1/completions", {"prompt": "Hello", "max_tokens": 3})
        m = S.metrics()
        self.assertGreater(m["kvrt:time_to_first_token_seconds_count"], 0)
        self.assertEqual(m["kvrt:kv_cache_blocks_free"] + m["kvrt:kv_cache_blocks_used"],
                         m["kvrt:kv_cache_blocks_total"])
        self.assertGreater(m["kvrt:generation_tokens_total"], 0)

    def test_curl(self):
        def curl(*args):
            return subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, check=True,
                                  timeout=60).stdout.decode()
        out = curl(S.url + "health")
        self.assertTrue(out.endswith("\n200"))
        out = curl("-N", S.url + "v1/completions", "-H", "Content-Type: application/json",
                   "-d", '{"prompt": "Once", "max_tokens": 5, "stream": true}')
        self.assertTrue(out.endswith("data: [DONE]\n\n\n200"), out)
        out = curl(S.url + "v1/chat/completions", "-d", '{"messages": [{"role": "user", "content": "hi"}], '
                                                        '"max_tokens": 3}')
        self.assertEqual(out.rsplit("\n", 1)[1], "200")
        self.assertEqual(json.loads(out.rsplit("\n", 1)[0])["object"], "chat.completion")


class Cancellation(unittest.TestCase):
    def cancel_case(self, stream):
        before = S.wait_metric("kvrt:kv_cache_blocks_used", 0)
        self.assertEqual(before["kvrt:kv_cache_blocks_used"], 0)
        body = {"prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True, "stream": stream}
        conn, resp = harness.open_stream(S, "/v1/completions", body) if stream else (S.conn(), None)
        if stream:
            self.assertEqual(resp.status, 200)
            self.assertTrue(resp.readline().startswith(b"data: "))
        else:
            conn.request("POST", "/v1/completions", body=json.dumps(body))
            deadline = time.time() + 30  # until it is generating
            while S.metrics()["kvrt:num_requests_running"] < 1 and time.time() < deadline:
                time.sleep(0.01)
        running = S.metrics()
        self.assertGreater(running["kvrt:kv_cache_blocks_used"], 0, "the request holds blocks")
        harness.drop(conn, resp)
        after = S.wait_metric("kvrt:kv_cache_blocks_used", 0)
        self.assertEqual(after["kvrt:kv_cache_blocks_used"], 0, "its blocks are back")
        self.assertEqual(after["kvrt:num_requests_running"], 0)
        self.assertEqual(after["kvrt:num_requests_cancelled_total"],
                         before["kvrt:num_requests_cancelled_total"] + 1)
        self.assertLess(after["kvrt:generation_tokens_total"] - before["kvrt:generation_tokens_total"], 2000,
                        "it stopped before max_tokens")
        self.assertEqual(after["kvrt:kv_cache_blocks_free"], after["kvrt:kv_cache_blocks_total"])

    def test_disconnect_mid_stream(self):
        self.cancel_case(True)

    def test_disconnect_while_waiting_whole(self):
        self.cancel_case(False)


def expect_error(test, status_body, status, param=None, type_=None, code=None, fragment=None):
    got_status, body = status_body
    test.assertEqual(got_status, status, body)
    test.assertEqual(set(body), {"error"})
    err = body["error"]
    test.assertEqual(set(err), {"message", "type", "param", "code"})
    test.assertTrue(err["message"])
    if param is not None:
        test.assertEqual(err["param"], param)
    if type_ is not None:
        test.assertEqual(err["type"], type_)
    if code is not None:
        test.assertEqual(err["code"], code)
    if fragment is not None:
        test.assertIn(fragment, err["message"])


class BadInput(unittest.TestCase):
    def post_raw(self, path, raw, headers=None):
        status, _, data = S.request("POST", path, raw, headers)
        return status, json.loads(data)

    def test_malformed_json(self):
        for raw in (b'{"prompt": ', b'{"prompt": "x"} trailing', b"[1, 2", b"", b"nul\x00l"):
            expect_error(self, self.post_raw("/v1/completions", raw), 400, type_="invalid_request_error")
        expect_error(self, self.post_raw("/v1/completions", b'["a list"]'), 400, fragment="JSON object")
        expect_error(self, self.post_raw("/v1/completions", b'{"prompt": "a\\u0000b"}'), 400, fragment="NUL")

    def test_invalid_utf8(self):
        for raw in (b'{"prompt": "\xff"}', b'{"prompt": "\xc3"}', b'{"prompt": "\xed\xa0\x80"}',
                    b'{"prompt": "\xc0\xaf"}'):
            expect_error(self, self.post_raw("/v1/completions", raw), 400, fragment="UTF-8")

    def test_wrong_types(self):
        cases = [("max_tokens", "5"), ("max_tokens", 2.5), ("temperature", "hot"), ("top_p", [1]),
                 ("top_k", 1.5), ("seed", "x"), ("n", True), ("stream", "yes"), ("stop", 7), ("stop", [""]),
                 ("stop", ["ok", 3]), ("logprobs", "all"), ("min_p", {}), ("model", 3), ("prompt", {"a": 1}),
                 ("prompt", [1, "x"]), ("prompt", ["a", "b"]), ("stream_options", 1), ("ignore_eos", 1)]
        for field, value in cases:
            body = {"prompt": "hi", "max_tokens": 2, field: value}
            expect_error(self, S.post("/v1/completions", body), 400, param=field, type_="invalid_request_error")
        expect_error(self, S.post("/v1/completions", {"max_tokens": 2}), 400, param="prompt")
        for msgs in (None, [], "hi", [{"content": "x"}], [{"role": "robot", "content": "x"}],
                     [{"role": "user", "content": 5}], [{"role": "user", "content": [{"type": "image_url"}]}]):
            body = {"max_tokens": 2} if msgs is None else {"messages": msgs, "max_tokens": 2}
            expect_error(self, S.post("/v1/chat/completions", body), 400, param="messages")

    def test_out_of_range(self):
        for field, value in (("max_tokens", -1), ("max_tokens", 0), ("max_tokens", 10 ** 12), ("temperature", -0.1),
                             ("temperature", 2.5), ("top_p", 0), ("top_p", 1.5), ("min_p", -1), ("n", 0),
                             ("n", 1000), ("top_k", -2), ("repeat_penalty", 0)):
            expect_error(self, S.post("/v1/completions", {"prompt": "hi", field: value}), 400, param=field)
        expect_error(self, S.post("/v1/completions", {"prompt": [1, 99999]}), 400, param="prompt",
                     fragment="vocabulary")

    def test_unsupported_features_refused(self):
        for field, value in (("presence_penalty", 0.5), ("frequency_penalty", 1), ("echo", True),
                             ("logit_bias", {"1": 5}), ("logprobs", 3), ("best_of", 3)):
            expect_error(self, S.post("/v1/completions", {"prompt": "hi", field: value}), 400, param=field)
        expect_error(self, S.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                           "top_logprobs": 2}), 400, param="top_logprobs")
        status, r = S.post("/v1/completions", {"prompt": "hi", "max_tokens": 1, "presence_penalty": 0,
                                               "user": "me", "unknown_field": [1]})
        self.assertEqual(status, 200, "defaults and unknown fields are accepted")

    def test_unknown_model(self):
        expect_error(self, S.post("/v1/completions", {"model": "gpt-4o", "prompt": "hi"}), 404, param="model",
                     code="model_not_found")
        expect_error(self, S.post("/v1/chat/completions", {"model": "x", "messages": [{"role": "user",
                                                                                      "content": "hi"}]}),
                     404, code="model_not_found")

    def test_prompt_over_context(self):
        long_prompt = "hello " * 2100  # about 2,100 tokens; the context is 2,048
        expect_error(self, S.post("/v1/completions", {"prompt": long_prompt, "max_tokens": 1}), 400,
                     param="prompt", code="context_length_exceeded")
        expect_error(self, S.post("/v1/completions", {"prompt": [1] * 2048, "max_tokens": 1}), 400,
                     code="context_length_exceeded")
        expect_error(self, S.post("/v1/completions", {"prompt": [1] * 2000, "max_tokens": 100}), 400,
                     param="max_tokens", code="context_length_exceeded")
        status, r = S.post("/v1/completions", {"prompt": [1] * 2000, "max_tokens": 48, "ignore_eos": True})
        self.assertEqual((status, r["usage"]["completion_tokens"]), (200, 48), "exactly the context is fine")

    def test_paths_and_methods(self):
        status, _, body = S.request("GET", "/v1/nothing")
        expect_error(self, (status, json.loads(body)), 404)
        status, _, body = S.request("GET", "/v1/completions")
        expect_error(self, (status, json.loads(body)), 405)
        status, _, body = S.request("DELETE", "/health")
        expect_error(self, (status, json.loads(body)), 405)
        # answered before its body was read: the body is drained and the connection stays usable
        c = S.conn()
        try:
            for path, want in (("/v1/nothing", 404), ("/health", 405), ("/v1/completions", 200)):
                c.request("POST", path, body=json.dumps({"prompt": "hello " * 500, "max_tokens": 1}))
                r = c.getresponse()
                r.read()
                self.assertEqual(r.status, want, path)
        finally:
            c.close()
        c = L.conn()
        try:  # 401 and 413 on one keep-alive connection, then a good request
            for headers, want in (({}, 401), (Limits.AUTH, 413)):
                c.request("POST", "/v1/completions", body="y" * 6000, headers=headers)
                r = c.getresponse()
                r.read()
                self.assertEqual(r.status, want)
                if r.getheader("Connection", "").lower() == "close":
                    c.close()
            c.request("GET", "/v1/models", headers=Limits.AUTH)
            r = c.getresponse()
            r.read()
            self.assertEqual(r.status, 200)
        finally:
            c.close()


class Limits(unittest.TestCase):
    AUTH = {"Authorization": "Bearer " + KEY}

    def test_api_key(self):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer " + KEY[:-1]},
                        {"Authorization": "Bearer " + KEY + "x"}, {"Authorization": KEY},
                        {"Authorization": "Basic " + KEY}):
            for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/completions", {"prompt": "x"}),
                                       ("POST", "/v1/chat/completions", {"messages": []})):
                status, hdrs, data = L.request(method, path, body, headers)
                expect_error(self, (status, json.loads(data)), 401, type_="authentication_error",
                             code="invalid_api_key")
                self.assertEqual(hdrs.get("www-authenticate"), "Bearer")
        status, _, _ = L.request("GET", "/v1/models", headers=self.AUTH)
        self.assertEqual(status, 200)
        status, r = L.post("/v1/completions", {"prompt": "x", "max_tokens": 2}, self.AUTH)
        self.assertEqual(status, 200, r)
        for path in ("/health", "/metrics", "/"):
            self.assertEqual(L.request("GET", path)[0], 200, path + " needs no key")

    def test_body_limit(self):
        big = json.dumps({"prompt": "a" * 5000})
        status, _, data = L.request("POST", "/v1/completions", big, self.AUTH)
        expect_error(self, (status, json.loads(data)), 413)
        # chunked, no Content-Length: the limit holds while the body arrives
        out = subprocess.run(["curl", "-sS", "-H", "Authorization: Bearer " + KEY, "-H", "Transfer-Encoding: chunked",
                              "--data-binary", big, "-w", "\n%{http_code}", L.url + "v1/completions"],
                             capture_output=True, check=True, timeout=60).stdout.decode()
        self.assertTrue(out.endswith("\n413"), out)
        ok = json.dumps({"prompt": "hello " * 500, "max_tokens": 1})
        status, _, data = L.request("POST", "/v1/completions", ok, self.AUTH)
        self.assertEqual(status, 200, data)

    def test_queue_limit_429(self):
        # --max-seqs 1 --max-queue 0: one request at a time
        conn, resp = harness.open_stream(L, "/v1/completions", {"prompt": "Once", "max_tokens": 2000,
                                                                "ignore_eos": True, "stream": True}, self.AUTH)
        try:
            self.assertEqual(resp.status, 200)
            resp.readline()
            status, hdrs, data = L.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 1}, self.AUTH)
            expect_error(self, (status, json.loads(data)), 429)
            self.assertIn("retry-after", hdrs)
        finally:
            harness.drop(conn, resp)
        m = L.wait_metric("kvrt:kv_cache_blocks_used", 0)
        self.assertEqual(m["kvrt:kv_cache_blocks_used"], 0)
        deadline = time.time() + 30
        while True:  # the slot frees once the cancel has gone through
            status, r = L.post("/v1/completions", {"prompt": "x", "max_tokens": 1}, self.AUTH)
            if status != 429 or time.time() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(status, 200, r)


class CommandLine(unittest.TestCase):
    def run_server(self, *args, env=None):
        return subprocess.run([EXE, *args], capture_output=True, timeout=120, env=env or harness.env_without_key())

    def test_usage(self):
        r = self.run_server("--help")
        self.assertEqual(r.returncode, 0)
        for flag in ("--host", "--port", "--api-key", "--max-seqs", "--ctx", "--backend", "--kv-type", "--max-queue",
                     "--max-body", "--shutdown-timeout"):
            self.assertIn(flag, r.stdout.decode())
        self.assertEqual(self.run_server("--version").returncode, 0)
        for args, needle in ((["--port", "0"], "no model"), (["-m", MODEL, "--port", "65536"], "--port"),
                             (["-m", MODEL, "--max-body", "0"], "--max-body"), (["-m", MODEL, "--bogus"], "bogus"),
                             (["-m", MODEL, "--preempt", "never"], "--preempt"),
                             (["-m", MODEL, "--api-key", "a", "--api-key-file", "/dev/null"], "not both"),
                             (["-m", MODEL, "--api-key-file", "/nonexistent/key"], "/nonexistent/key"),
                             (["-m", MODEL, "--api-key-file", "/dev/null"], "empty")):
            r = self.run_server(*args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn(needle, r.stderr.decode(), args)
            self.assertEqual(r.stdout, b"", args)

    def test_bad_model_and_address(self):
        r = self.run_server("-m", "/nonexistent/model.gguf", "--port", "0")
        self.assertEqual(r.returncode, 1)
        self.assertIn("/nonexistent/model.gguf", r.stderr.decode())
        r = self.run_server("-m", MODEL, "--host", "203.0.113.7", "--port", "0")  # not an address of this machine
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot listen", r.stderr.decode())

    def test_key_from_environment_and_file(self):
        env = dict(harness.env_without_key(), KVRT_API_KEY="from-env")
        with harness.Server(EXE, MODEL, *COMMON, env=env) as srv:
            self.assertEqual(srv.request("GET", "/v1/models")[0], 401)
            self.assertEqual(srv.request("GET", "/v1/models", headers={"Authorization": "Bearer from-env"})[0], 200)
            self.assertEqual(srv.stop()[0], 0)
        with tempfile.NamedTemporaryFile("w", suffix=".key") as f:
            f.write("from-file\nignored second line\n")
            f.flush()
            with harness.Server(EXE, MODEL, *COMMON, "--api-key-file", f.name, env=env) as srv:
                self.assertEqual(srv.request("GET", "/v1/models", headers={"Authorization": "Bearer from-env"})[0],
                                 401, "the file's key wins over the environment's")
                self.assertEqual(srv.request("GET", "/v1/models", headers={"Authorization": "Bearer from-file"})[0],
                                 200)
                self.assertEqual(srv.stop()[0], 0)
        long_key = "k" * 1500 + "-end"  # the whole first line, however long
        with tempfile.NamedTemporaryFile("w", suffix=".key") as f:
            f.write(long_key + "\n")
            f.flush()
            with harness.Server(EXE, MODEL, *COMMON, "--api-key-file", f.name, env=env) as srv:
                self.assertEqual(srv.request("GET", "/v1/models", headers={"Authorization": "Bearer " + long_key})[0],
                                 200)
                self.assertEqual(srv.request("GET", "/v1/models",
                                             headers={"Authorization": "Bearer " + long_key[:1023]})[0], 401)
                self.assertEqual(srv.stop()[0], 0)

    def test_context_shift(self):
        # --context-shift: max_tokens may exceed the context and the completion runs to it, greedy
        # text as kvrt-run --context-shift's (the session's shift); without it such max_tokens is a 400
        body = {"prompt": "Once upon a time", "max_tokens": 150, "temperature": 0, "ignore_eos": True}
        args = ["-t", "1", "--ctx", "64", "--block-size", "8"]
        with harness.Server(EXE, MODEL, *args, "--context-shift", "--sinks", "4") as srv:
            status, r = srv.post("/v1/completions", body)
            self.assertEqual(status, 200, r)
            self.assertEqual(r["usage"]["completion_tokens"], 150)
            self.assertEqual(r["choices"][0]["finish_reason"], "length")
            self.assertEqual(srv.stop()[0], 0)
        out = subprocess.run([os.path.join(BUILD, "kvrt-run"), "-m", MODEL, "-p", body["prompt"], "-n", "150",
                              "--temp", "0", "-t", "1", "-c", "64", "--block-size", "8", "--context-shift",
                              "--sinks", "4", "--ignore-eos"], capture_output=True, check=True).stdout.decode()
        self.assertEqual(r["choices"][0]["text"], out[len(body["prompt"]):-1])
        with harness.Server(EXE, MODEL, *args) as srv:
            status, r = srv.post("/v1/completions", body)
            expect_error(self, (status, r), 400)
            self.assertEqual(srv.stop()[0], 0)
        r = self.run_server("-m", MODEL, *args, "--context-shift", "--sinks", "64", "--port", "0")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("sink", r.stderr.decode())


class ChatTemplates(unittest.TestCase):
    """A model with a chat template: messages are rendered by it, its markers are special tokens, the messages'
    text never is; a model without one gets the plain transcript (the Endpoints tests)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = os.path.join(cls.tmp.name, "phi3.gguf")
        vocab = os.path.join(SRC, "tests", "data", "vocab", "phi-3-vocab.gguf")
        subprocess.run([os.path.join(BUILD, "kvrt-synth"), "--preset", "tiny", "--vocab-from", vocab, "-q",
                        "-o", cls.model], check=True)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def tokens(self, text):
        r = subprocess.run([os.path.join(BUILD, "kvrt-tokenize"), "-m", self.model, "--special", "-p", text],
                           check=True, capture_output=True)
        return r.stdout.split()

    def prompt_tokens(self, srv, content):
        status, r = srv.post("/v1/chat/completions", {"messages": [{"role": "user", "content": content}],
                                                      "max_tokens": 1, "temperature": 0})
        self.assertEqual(status, 200, r)
        return r["usage"]["prompt_tokens"]

    def test_the_models_template(self):
        with harness.Server(EXE, self.model, *COMMON, env=harness.env_without_key()) as srv:
            want = len(self.tokens("<|user|>\nHi there<|end|>\n<|assistant|>\n"))
            self.assertEqual(self.prompt_tokens(srv, "Hi there"), want)
            # the marker inside a message is text (several tokens), never the one special token
            self.assertGreater(self.prompt_tokens(srv, "Hi <|end|> there"), want + 1)
            self.assertEqual(srv.stop()[0], 0)

    def test_named_template_and_unknown_name(self):
        with harness.Server(EXE, self.model, *COMMON, "--chat-template", "zephyr",
                            env=harness.env_without_key()) as srv:
            want = len(self.tokens("<|user|>\nHi there<|endoftext|>\n<|assistant|>\n"))
            self.assertEqual(self.prompt_tokens(srv, "Hi there"), want)
            self.assertEqual(srv.stop()[0], 0)
        r = subprocess.run([EXE, "-m", self.model, "--port", "0", "-t", "1", "--chat-template", "nope"],
                           capture_output=True, timeout=120)
        self.assertEqual(r.returncode, 1)
        self.assertIn("known: chatml", r.stderr.decode())


def write_long_piece_tokenizer(src, dst):
    """tok512.bin with every merged piece spelled as 300 Zs and its id: replies made of 300+-byte tokens."""
    d = open(src, "rb").read()
    off, out = 4, [struct.pack("<i", 304)]
    for i in range(512):
        score, n = struct.unpack_from("<fi", d, off)
        piece = d[off + 8:off + 8 + n]
        off += 8 + n
        if i >= 259 and n >= 2:
            piece = b"Z" * 300 + str(i).encode()
        out.append(struct.pack("<fi", score, len(piece)) + piece)
    open(dst, "wb").write(b"".join(out))


class LongTokens(unittest.TestCase):
    """A token's text is never cut at a fixed size: the log-probabilities' tokens add up to the text."""

    def test_logprob_tokens_of_300_bytes(self):
        data = os.environ.get("KVRT_TEST_MODELS", os.path.join(SRC, "tests", "data"))
        with tempfile.TemporaryDirectory() as tmp:
            tok = os.path.join(tmp, "long.bin")
            write_long_piece_tokenizer(os.path.join(data, "tok512.bin"), tok)
            with harness.Server(EXE, os.path.join(data, "stories260K.bin"), "-z", tok, "-t", "1",
                                env=harness.env_without_key()) as srv:
                status, r = srv.post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 4,
                                                         "temperature": 0, "logprobs": 0, "ignore_eos": True})
                self.assertEqual(srv.stop()[0], 0)
        self.assertEqual(status, 200, r)
        text = r["choices"][0]["text"]
        self.assertRegex(text, "Z{300}[0-9]+")
        self.assertEqual("".join(r["choices"][0]["logprobs"]["tokens"]), text)


class Shutdown(unittest.TestCase):
    def test_sigterm_with_requests_in_flight(self):
        with harness.Server(EXE, MODEL, *COMMON, "--shutdown-timeout", "0", env=harness.env_without_key()) as srv:
            conn, resp = harness.open_stream(srv, "/v1/completions", {"prompt": "Once", "max_tokens": 2000,
                                                                      "ignore_eos": True, "stream": True})
            self.assertEqual(resp.status, 200)
            resp.readline()
            srv.proc.send_signal(signal.SIGTERM)
            rest = resp.read().decode()  # the stream is closed properly: an error event, then [DONE]
            self.assertIn('"error"', rest)
            self.assertIn("shutting down", rest)
            self.assertTrue(rest.endswith("data: [DONE]\n\n"), rest[-200:])
            conn.close()
            code, err = srv.stop()
            self.assertEqual(code, 0, err)
            self.assertIn("stopped", err)

    def test_sigint_lets_requests_finish(self):
        with harness.Server(EXE, MODEL, *COMMON, "--shutdown-timeout", "120", env=harness.env_without_key()) as srv:
            conn, resp = harness.open_stream(srv, "/v1/completions", {"prompt": "Once", "max_tokens": 400, "n": 2,
                                                                      "ignore_eos": True, "stream": True})
            resp.readline()
            srv.proc.send_signal(signal.SIGINT)
            time.sleep(0.1)
            status, _, data = srv.request("GET", "/health")
            self.assertEqual((status, json.loads(data)["status"]), (503, "stopping"))
            expect_error(self, srv.post("/v1/completions", {"prompt": "x"}), 503, fragment="shutting down")
            rest = resp.read().decode()
            self.assertFalse('"error"' in rest, rest[-300:])
            self.assertEqual(rest.count('"finish_reason":"length"'), 2, "the request in flight finished")
            conn.close()
            code, err = srv.stop()
            self.assertEqual(code, 0, err)
            self.assertIn("stopping: 1 requests in flight", err)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)
