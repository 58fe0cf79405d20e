"""A grpcio server for the service `demo.Greeter`, with generic handlers on
raw bytes (no .proto, no generated stubs), as the integration tests run it.

Methods:
  SayHello  unary: answers b"hello " + the request
  Missing   unary: aborts with NOT_FOUND (5), message "no such greeting"
  Boom      unary: raises, which grpcio turns into UNKNOWN (2)
  Stream    server streaming: five messages

Usage: python3 grpc_server.py [--port PORT] [--workers N]
Listens on 127.0.0.1 (port 0: the kernel chooses) and prints
`listening PORT` once it accepts calls; runs until killed.
"""

import argparse
from concurrent import futures

import grpc


def say_hello(req, ctx):
    return b"hello " + req


def missing(req, ctx):
    ctx.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")


def boom(req, ctx):
    raise RuntimeError("boom")


def stream(req, ctx):
    for i in range(5):
        yield b"part %d" % i


HANDLERS = {
    "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
    "Missing": grpc.unary_unary_rpc_method_handler(missing),
    "Boom": grpc.unary_unary_rpc_method_handler(boom),
    "Stream": grpc.unary_stream_rpc_method_handler(stream),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=64)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("demo.Greeter", HANDLERS),))
    port = server.add_insecure_port("127.0.0.1:%d" % args.port)
    server.start()
    print("listening %d" % port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
