#!/usr/bin/env python3
"""Serves a few HTTPS "sites" on loopback for the capture tests: one port per site, pages that
differ in size between sites, HTTP/1.1 keep-alive, through Python's ssl (OpenSSL). Exits on its
own after --lifetime seconds so that a failed test never leaves it running."""

import argparse
import http.server
import ssl
import threading
import time


def page(site: int, index: int) -> bytes:
    # Sizes differ by site and page so that record-size sequences tell sites apart.
    size = 700 * (site + 1) * (index + 1) + 37 * site
    return (f"site{site} page{index}\n".encode() * (size // 16 + 1))[:size]


def handler_for(site: int):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            try:
                index = int(self.path.strip("/").removeprefix("page") or 0)
            except ValueError:
                index = 0
            body = page(site, index % 8)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class Server6(Server):
    import socket

    address_family = socket.AF_INET6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, required=True, help="first port; site i listens on port + i")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--ipv6-port", type=int, help="also serve site 0 on [::1] at this port")
    parser.add_argument("--lifetime", type=float, default=120)
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["http/1.1"])
    servers = [Server(("127.0.0.1", args.port + i), handler_for(i)) for i in range(args.sites)]
    if args.ipv6_port:
        servers.append(Server6(("::1", args.ipv6_port), handler_for(0)))
    for server in servers:
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    time.sleep(args.lifetime)


if __name__ == "__main__":
    main()
