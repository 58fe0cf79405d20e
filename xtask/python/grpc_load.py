"""Closed-loop load on a gRPC unary method, for `cargo xtask bench overhead`.

PROCS processes (spawned, so none inherits grpcio state from a parent),
each with its own channel to 127.0.0.1:PORT (one HTTP/2 connection) and
THREADS threads that call /demo.Greeter/SayHello back to back, each call
waiting for its answer. Every process connects first; then all start
together and stop starting calls after SECS seconds. Calls that fail are
counted apart and left out of the rate and the latencies.

Usage: python3 grpc_load.py PORT [--secs S] [--procs P] [--threads T]
Prints one line:
  calls=N errors=E secs=S calls_per_sec=R p50_ms=X p99_ms=Y
"""

import argparse
import multiprocessing
import threading
import time

METHOD = "/demo.Greeter/SayHello"


def worker(port, threads, secs, ready, go, results):
    import grpc

    ch = grpc.insecure_channel("127.0.0.1:%d" % port,
                               options=[("grpc.enable_http_proxy", 0)])
    grpc.channel_ready_future(ch).result(timeout=15)
    say = ch.unary_unary(METHOD)
    # One call before the clock starts, so the HPACK tables and the
    # connection's windows are past their first use.
    say(b"\x0a\x05warm", timeout=10)
    ready.put(True)
    go.wait()
    deadline = time.monotonic() + secs
    latencies = [[] for _ in range(threads)]
    errors = [0] * threads

    def run(t):
        lat = latencies[t]
        n = 0
        while time.monotonic() < deadline:
            req = b"\x0a\x08user-%03d" % (n % 1000)
            n += 1
            start = time.perf_counter()
            try:
                say(req, timeout=10)
            except grpc.RpcError:
                errors[t] += 1
                continue
            lat.append(time.perf_counter() - start)

    started = time.monotonic()
    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    elapsed = time.monotonic() - started
    ch.close()
    results.put(([x for lat in latencies for x in lat], sum(errors), elapsed))


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[i]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--secs", type=float, default=10)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    procs = [ctx.Process(target=worker,
                         args=(args.port, args.threads, args.secs, ready, go, results))
             for _ in range(args.procs)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    go.set()
    latencies, errors, elapsed = [], 0, 0.0
    for _ in procs:
        lat, err, secs = results.get(timeout=args.secs + 60)
        latencies.extend(lat)
        errors += err
        elapsed = max(elapsed, secs)
    for p in procs:
        p.join()
    latencies.sort()
    print("calls=%d errors=%d secs=%.3f calls_per_sec=%.1f p50_ms=%.3f p99_ms=%.3f" % (
        len(latencies), errors, elapsed, len(latencies) / elapsed if elapsed else 0.0,
        1000 * percentile(latencies, 0.50), 1000 * percentile(latencies, 0.99)), flush=True)


if __name__ == "__main__":
    main()
