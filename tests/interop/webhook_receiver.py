"""A webhook receiver for the tests, checking signatures with the `standardwebhooks` package
(an implementation independent of the daemon's).

    webhook_receiver.py serve SECRET DIRECTORY
        Listens on 127.0.0.1 (a free port, printed on the first line of stdout). Each POST is
        verified and appended as one JSON line to DIRECTORY/deliveries.jsonl:
        {"id", "timestamp", "verified", "body", "answered"}. The answer is decided by the file
        DIRECTORY/mode, read on each request: absent or "ok" answers 204; a number answers that
        status; "close" closes the connection without answering; "slow N" waits N seconds, then
        answers 204; "refuse ID STATUS" answers STATUS to the event whose webhook-id is ID and
        204 to every other.

    webhook_receiver.py verify SECRET
        Reads {"headers": {...}, "body": "..."} on stdin and prints "valid" or "invalid".
"""

import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook


def is_valid(secret, headers, body):
    try:
        Webhook(secret).verify(body, headers)
        return True
    except Exception:
        return False


def serve(secret, directory):
    log_lock = threading.Lock()
    log_path = os.path.join(directory, "deliveries.jsonl")
    mode_path = os.path.join(directory, "mode")

    def mode():
        try:
            with open(mode_path) as mode_file:
                return mode_file.read().strip() or "ok"
        except FileNotFoundError:
            return "ok"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length).decode("utf-8")
            headers = {name.lower(): value for name, value in self.headers.items()}
            current = mode()
            answered = 204
            if current == "close":
                answered = "closed"
            elif current.startswith("slow "):
                time.sleep(float(current.split()[1]))
            elif current.startswith("refuse "):
                _, refused, status = current.split()
                if headers.get("webhook-id") == refused:
                    answered = int(status)
            elif current != "ok":
                answered = int(current)
            record = {
                "id": headers.get("webhook-id"),
                "timestamp": headers.get("webhook-timestamp"),
                "signature": headers.get("webhook-signature"),
                "content_type": headers.get("content-type"),
                "verified": is_valid(secret, headers, body),
                "body": body,
                "answered": answered,
            }
            with log_lock, open(log_path, "a") as log:
                log.write(json.dumps(record) + "\n")
            if answered == "closed":
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.send_response(answered)
            self.send_header("content-length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


def verify(secret):
    request = json.load(sys.stdin)
    print("valid" if is_valid(secret, request["headers"], request["body"]) else "invalid")


if __name__ == "__main__":
    command, secret = sys.argv[1], sys.argv[2]
    if command == "serve":
        serve(secret, sys.argv[3])
    elif command == "verify":
        verify(secret)
    else:
        sys.exit(f"unknown command {command}")
