import http.server
import os
import threading

import pytest
import torch

# CI runs pytest -n 2 on 2 cores: one intra-op thread per worker avoids oversubscription,
# which made conv-heavy tests 4-6x slower.
torch.set_num_threads(int(os.environ.get("GAN_REFINE_TEST_THREADS", "1")))


@pytest.fixture(scope="module")
def serve_http():
    """Start a loopback HTTP server for a handler class: `url = serve_http(Handler)`.

    Servers stop when the test module ends. Tests of downloads use real sockets, never the network.
    """
    servers = []

    def start(handler):
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"
    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()
