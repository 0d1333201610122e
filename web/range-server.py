"""The web tests' HTTP server (tests only): serves a folder like `python3 -m http.server`, and
also answers `Range: bytes=a-b` with 206 and the bytes asked for, which Python's server does
not. Every request is appended to the log file (method, path, Range, status) so a test can
count what a page asked for; `Cache-Control: no-store` keeps the browser's HTTP cache out of
it (a reload must be served by the page's own cache). `--no-ranges` ignores Range, as some
servers do.

Usage: python3 web/range-server.py PORT ROOT LOG [--no-ranges]
"""

import io
import os
import re
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class Handler(SimpleHTTPRequestHandler):
    ranges = True
    log_path = None

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def send_head(self):
        wanted = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not wanted or not self.ranges or not os.path.isfile(path):
            return super().send_head()
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
        size = os.path.getsize(path)
        if not m:
            self.send_error(400, "only single byte ranges are served")
            return None
        start = int(m[1])
        end = min(int(m[2]) if m[2] else size - 1, size - 1)
        if start >= size or end < start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        stat = os.stat(path)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"')
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(body)

    def log_request(self, code="-", size="-"):
        with open(self.log_path, "a") as log:
            log.write(f"{self.command} {self.path} {self.headers.get('Range', '-')} {code}\n")

    def log_message(self, *args):
        pass


def main():
    port, root, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    Handler.ranges = "--no-ranges" not in sys.argv[4:]
    Handler.log_path = os.path.abspath(log)
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(Handler, directory=root))
    server.serve_forever()


if __name__ == "__main__":
    main()
