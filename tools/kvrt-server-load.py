#!/usr/bin/env python3
"""Load test for kvrt-server: N concurrent streaming clients for a while, with
ShareGPT-like lengths, every answer checked; then the same requests offline
through `kvrt-bench serve --workload` for the HTTP overhead.

Each client sends its next request as soon as its last answer is complete
(a closed loop). Request k is generated from (--seed, k): a BOS then random
token ids, prompt and output lengths lognormal as kvrt-bench serve's
"sharegpt" workload (medians 64 and 64, sigma 1, clipped to [4, 256] and to
the context), greedy, EOS ignored, so every answer has exactly max_tokens
tokens and is fully determined by its prompt.

Checks (exit 1 when one fails):
  lost       every request sent gets 200, well-formed chunks and data: [DONE]
  mixed      one id per stream, chunks of choice 0 only, and the text equals the
             same prompt run alone afterwards (non-streamed, nothing else running)
  truncated  usage.completion_tokens == max_tokens, finish_reason "length",
             usage.prompt_tokens == the prompt's length
  leaked     after the run /metrics shows no KV block used and nothing running

Numbers: output tokens/s, requests/s, TTFT (request sent -> first text chunk)
and TPOT ((last chunk - first chunk) / (tokens - 1)) percentiles. With
--bench, the same requests (in the same order, the same number in flight)
run offline in kvrt-bench serve and the ratios server/offline are printed.

  tools/kvrt-server-load.py --server build/kvrt-server --model models/stories260K.gguf \\
      --server-args="-t 1 --max-seqs 64" --clients 64 --duration 60 --bench build/kvrt-bench

Python's standard library only.
"""
import argparse
import http.client
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "server"))


def lognormal(rng, median, sigma, lo, hi):
    x = round(median * math.exp(sigma * rng.gauss(0.0, 1.0)))
    return int(max(lo, min(hi, x)))


def make_request(seed, k, n_vocab, bos, ctx):
    """Request k: (prompt ids, max_tokens), like kvrt-bench serve's sharegpt workload."""
    rng = random.Random(seed * 1000003 + k)
    n_prompt = min(lognormal(rng, 64.0, 1.0, 4, 256), ctx // 2)
    max_tokens = max(1, min(lognormal(rng, 64.0, 1.0, 4, 256), ctx - n_prompt))
    lo = min(3, n_vocab - 1)
    prompt = [rng.randrange(lo, n_vocab) for _ in range(n_prompt)]
    if bos >= 0:
        prompt[0] = bos
    return prompt, max_tokens


def process_cpu_s(pid):
    """User + system CPU seconds of a process so far (Linux /proc), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def percentiles(values):
    v = sorted(values)
    out = []
    for p in (50, 95, 99):
        if not v:
            out.append(0.0)
            continue
        rank = p / 100 * (len(v) - 1)
        lo = int(rank)
        hi = min(lo + 1, len(v) - 1)
        out.append(v[lo] + (rank - lo) * (v[hi] - v[lo]))
    return out


class Target:
    def __init__(self, url, key):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = "Bearer " + key

    def get_json(self, path):
        c = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            c.request("GET", path, headers=self.headers)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def metrics(self):
        status, data = self.get_json("/metrics")
        out = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                name, _, labels = key.partition("{")
                if labels.count("=") == 1:
                    out[name] = float(value)
        return out


def stream_one(target, prompt, max_tokens, conn):
    """Sends one streamed request; returns a result dict (problems listed in "errors")."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                       "stream": True, "stream_options": {"include_usage": True}})
    res = {"errors": [], "text": "", "tokens": 0, "ttft": None, "first": None, "last": None}
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=body, headers=target.headers)
    r = conn.getresponse()
    if r.status != 200:
        res["errors"].append("lost: status %d %s" % (r.status, r.read()[:200]))
        return res
    ids, text, finish, usage, done = set(), [], None, None, False
    for line in iter(r.readline, b""):
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        now = time.perf_counter()
        if data == b"[DONE]":
            done = True
            continue
        if done:
            res["errors"].append("mixed: an event after [DONE]")
        ev = json.loads(data)
        if "error" in ev:
            res["errors"].append("lost: error event %s" % ev["error"])
            continue
        ids.add(ev["id"])
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev["choices"]:
            if ch["index"] != 0:
                res["errors"].append("mixed: a chunk of choice %d" % ch["index"])
            if ch.get("text"):
                text.append(ch["text"])
                if res["first"] is None:
                    res["first"] = now
                    res["ttft"] = now - t0
                res["last"] = now
            if ch.get("finish_reason"):
                finish = ch["finish_reason"]
    if not done:
        res["errors"].append("lost: no data: [DONE]")
    if len(ids) != 1:
        res["errors"].append("mixed: %d ids in one stream" % len(ids))
    if finish != "length":
        res["errors"].append("truncated: finish_reason %r" % finish)
    if not usage or usage["completion_tokens"] != max_tokens or usage["prompt_tokens"] != len(prompt):
        res["errors"].append("truncated: usage %s for %d prompt tokens, max_tokens %d" % (usage, len(prompt),
                                                                                       max_tokens))
    res["text"] = "".join(text)
    res["tokens"] = usage["completion_tokens"] if usage else 0
    return res


def alone(target, prompt, max_tokens):
    c = http.client.HTTPConnection(target.host, target.port, timeout=300)
    try:
        c.request("POST", "/v1/completions", body=json.dumps({"prompt": prompt, "max_tokens": max_tokens,
                                                              "temperature": 0, "ignore_eos": True}),
                  headers=target.headers)
        r = c.getresponse()
        data = json.loads(r.read())
        return data["choices"][0]["text"] if r.status == 200 else None
    finally:
        c.close()


def run_load(target, args, ctx):
    lock = threading.Lock()
    state = {"next": 0, "results": {}}
    stop_at = time.perf_counter() + args.duration

    def client():
        conn = http.client.HTTPConnection(target.host, target.port, timeout=600)
        while time.perf_counter() < stop_at:
            with lock:
                k = state["next"]
                state["next"] += 1
            prompt, max_tokens = make_request(args.seed, k, args.vocab, args.bos, ctx)
            try:
                res = stream_one(target, prompt, max_tokens, conn)
            except (OSError, http.client.HTTPException, ValueError) as e:
                res = {"errors": ["lost: %s: %s" % (type(e).__name__, e)], "text": "", "tokens": 0, "ttft": None,
                       "first": None, "last": None}
                conn.close()
                conn = http.client.HTTPConnection(target.host, target.port, timeout=600)
            res["prompt"], res["max_tokens"] = prompt, max_tokens
            with lock:
                state["results"][k] = res
        conn.close()

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state["client_cpu_s"] = time.process_time() - cpu0
    return state, time.perf_counter() - t0


def run_bench(args, results, ctx, wrap):
    """The same requests, in order, args.clients in flight, offline in kvrt-bench serve."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("# kvrt-server-load.py seed %d: max_tokens, then the prompt's ids\n" % args.seed)
        for k in sorted(results):
            r = results[k]
            f.write("%d %s\n" % (r["max_tokens"], " ".join(map(str, r["prompt"]))))
        path = f.name
    try:
        cmd = [*wrap, args.bench, "serve", "--model", args.model, "--workload", path, "--concurrency", str(args.clients),
               "--json", *args.bench_args.split()]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(cmd, capture_output=True, check=True, timeout=3600)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return json.loads(out.stdout), cmd, cpu
    finally:
        if args.keep_workload:
            print("workload kept in", path, file=sys.stderr)
        else:
            os.unlink(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running kvrt-server (else --server starts one)")
    ap.add_argument("--server", help="the kvrt-server binary to start")
    ap.add_argument("--model", help="the model (for --server and --bench)")
    ap.add_argument("--server-args", default="", help="more kvrt-server flags, e.g. \"-t 1 --max-seqs 64\"")
    ap.add_argument("--server-pid", type=int, help="with --url: the server's pid, to report its CPU time")
    ap.add_argument("--api-key", default=os.environ.get("KVRT_API_KEY"))
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds during which new requests are sent")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--vocab", type=int, default=512, help="token ids are drawn below this (the model's vocabulary)")
    ap.add_argument("--bos", type=int, default=1, help="BOS id put first in each prompt (-1: none)")
    ap.add_argument("--verify", type=int, default=256,
                    help="answers re-run alone and compared (spread over the run; -1 = all)")
    ap.add_argument("--bench", help="kvrt-bench binary: run the same requests offline and print the ratios")
    ap.add_argument("--bench-args", default="", help="more kvrt-bench serve flags, e.g. \"-t 1 --max-seqs 64\"")
    ap.add_argument("--keep-workload", action="store_true", help="keep the workload file given to kvrt-bench")
    ap.add_argument("--pin", action="store_true",
                    help="server and kvrt-bench on CPU 0 only, these clients on the other CPUs: both sides get "
                         "the same one core for all their work, whatever else the machine runs")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = ap.parse_args()
    if not args.url and not (args.server and args.model):
        ap.error("give --url, or --server and --model")
    if args.bench and not args.model:
        ap.error("--bench needs --model")

    wrap = []
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            ap.error("--pin needs two CPUs")
        wrap = ["taskset", "-c", str(cpus[0])]
        os.sched_setaffinity(0, cpus[1:])
    server = None
    if not args.url:
        import harness
        env = dict(os.environ)
        if args.api_key:
            env["KVRT_API_KEY"] = args.api_key
        server = harness.Server(args.server, args.model, *args.server_args.split(), env=env, wrap=wrap)
        args.url = server.url
    target = Target(args.url, args.api_key)
    failures = []
    try:
        status, data = target.get_json("/v1/models")
        if status != 200:
            raise SystemExit("GET /v1/models: %d %s" % (status, data[:200]))
        ctx = json.loads(data)["data"][0]["max_model_len"]
        before = target.metrics()

        pid = server.proc.pid if server else args.server_pid
        cpu_before = process_cpu_s(pid) if pid else None
        state, seconds = run_load(target, args, ctx)
        cpu_after = process_cpu_s(pid) if pid else None
        results = state["results"]
        errors = [(k, e) for k, r in sorted(results.items()) for e in r["errors"]]
        counts = {kind: sum(1 for _, e in errors if e.startswith(kind)) for kind in ("lost", "mixed", "truncated")}

        # no block leaked, nothing left running
        deadline = time.time() + 30
        while True:
            m = target.metrics()
            idle = m["kvrt:kv_cache_blocks_used"] == 0 and m["kvrt:num_requests_running"] == 0 and \
                m["kvrt:num_requests_waiting"] == 0
            if idle or time.time() > deadline:
                break
            time.sleep(0.1)
        if not idle:
            failures.append("leaked: %d KV blocks used, %d running, %d waiting after the run" % (
                m["kvrt:kv_cache_blocks_used"], m["kvrt:num_requests_running"], m["kvrt:num_requests_waiting"]))

        # greedy answers equal the same prompt run alone
        ok_keys = [k for k in sorted(results) if not results[k]["errors"]]
        n_verify = len(ok_keys) if args.verify < 0 else min(args.verify, len(ok_keys))
        step = max(1, len(ok_keys) // max(n_verify, 1))
        verified = 0
        for k in ok_keys[::step][:n_verify]:
            r = results[k]
            text = alone(target, r["prompt"], r["max_tokens"])
            verified += 1
            if text != r["text"]:
                counts["mixed"] += 1
                errors.append((k, "mixed: the streamed text differs from the same prompt run alone"))
        for kind, n in counts.items():
            if n:
                failures.append("%s: %d responses" % (kind, n))

        done = [results[k] for k in ok_keys]
        tokens = sum(r["tokens"] for r in done)
        ttft = [r["ttft"] for r in done if r["ttft"] is not None]
        tpot = [(r["last"] - r["first"]) / (r["tokens"] - 1) for r in done if r["tokens"] > 1 and r["first"]]
        report = {
            "tool": "kvrt-server-load", "url": args.url, "clients": args.clients, "duration_s": args.duration,
            "seed": args.seed, "pinned": args.pin, "requests": len(results), "ok": len(done), "seconds": seconds,
            "output_tokens": tokens, "output_tokens_per_s": tokens / seconds if seconds else 0.0,
            "requests_per_s": len(done) / seconds if seconds else 0.0,
            "client_cpu_s": state["client_cpu_s"],
            "server_cpu_s": cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None,
            "ttft_ms": dict(zip(("p50", "p95", "p99"), (1e3 * x for x in percentiles(ttft)))),
            "tpot_ms": dict(zip(("p50", "p95", "p99"), (1e3 * x for x in percentiles(tpot)))),
            "verified_alone": verified, "lost": counts["lost"], "mixed": counts["mixed"],
            "truncated": counts["truncated"], "leaked_blocks": int(m["kvrt:kv_cache_blocks_used"]),
            "preemptions": int(m["kvrt:num_preemptions_total"] - before["kvrt:num_preemptions_total"]),
            "failures": failures, "first_errors": ["request %d: %s" % ke for ke in errors[:10]],
        }
        if args.bench and done:
            off, cmd, off_cpu = run_bench(args, {k: results[k] for k in ok_keys}, ctx, wrap)
            report["offline"] = {k: off[k] for k in ("requests", "seconds", "output_tokens_per_s", "requests_per_s",
                                                     "ttft_ms", "tpot_ms", "device")}
            report["offline"]["cpu_s"] = off_cpu  # the whole process: model load and an 8-request warm-up included
            report["offline_command"] = " ".join(cmd)
            report["server_vs_offline"] = {
                "cpu_per_token": (report["server_cpu_s"] / tokens) / (off_cpu / off["output_tokens"])
                if report["server_cpu_s"] and off_cpu else None,
                "output_tokens_per_s": report["output_tokens_per_s"] / off["output_tokens_per_s"],
                "ttft_p50": report["ttft_ms"]["p50"] / max(off["ttft_ms"]["p50"], 1e-9),
                "tpot_p50": report["tpot_ms"]["p50"] / max(off["tpot_ms"]["p50"], 1e-9),
            }
    finally:
        if server:
            code, err = server.stop()
            if code != 0:
                failures.append("kvrt-server exited %d" % code)

    out = sys.stdout if not args.json else sys.stderr
    r = report
    print("kvrt-server-load: %d clients, %.0f s: %d requests (%d ok), %.0f output tok/s, %.2f req/s" % (
        args.clients, args.duration, r["requests"], r["ok"], r["output_tokens_per_s"], r["requests_per_s"]), file=out)
    print("  TTFT ms p50/p95/p99 %.1f/%.1f/%.1f, TPOT ms p50/p95/p99 %.2f/%.2f/%.2f; the clients used %.1f CPU s" % (
        *r["ttft_ms"].values(), *r["tpot_ms"].values(), r["client_cpu_s"]), file=out)
    print("  lost %d, mixed %d, truncated %d, KV blocks used after %d, %d answers equal to their prompt run alone, "
          "%d preemptions" % (r["lost"], r["mixed"], r["truncated"], r["leaked_blocks"], r["verified_alone"] -
                              min(r["mixed"], r["verified_alone"]), r["preemptions"]), file=out)
    if r["server_cpu_s"] is not None:
        print("  the server used %.1f CPU s (%.3f ms per output token)" % (
            r["server_cpu_s"], 1e3 * r["server_cpu_s"] / max(r["output_tokens"], 1)), file=out)
    if "offline" in r:
        o, x = r["offline"], r["server_vs_offline"]
        print("  offline (kvrt-bench serve, same requests, %d in flight): %.0f output tok/s, TTFT ms p50 %.1f, "
              "TPOT ms p50 %.2f, %.1f CPU s" % (args.clients, o["output_tokens_per_s"], o["ttft_ms"]["p50"],
                                                o["tpot_ms"]["p50"], o["cpu_s"]), file=out)
        print("  server / offline: %.3fx output tok/s, %.2fx TTFT p50, %.2fx TPOT p50%s" % (
            x["output_tokens_per_s"], x["ttft_p50"], x["tpot_p50"],
            ", %.2fx CPU time per output token" % x["cpu_per_token"] if x["cpu_per_token"] else ""), file=out)
    for line in r["first_errors"]:
        print("  " + line, file=out)
    for f in failures:
        print("FAIL: " + f, file=out)
    if args.json:
        json.dump(r, sys.stdout, indent=2)
        print()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
