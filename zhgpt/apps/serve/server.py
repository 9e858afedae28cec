"""Running the app: uvicorn on a socket bound up front, in the foreground (`zhgpt serve`) or in a background
thread (BackgroundServer: tests, benchmarks, notebooks); the command-line entry points."""
from __future__ import annotations

import argparse
import dataclasses
import socket
import sys
import threading
import time

from zhgpt.apps.serve.app import create_app
from zhgpt.apps.serve.config import ServeConfig
from zhgpt.apps.serve.served import ServedModel, load_model
from zhgpt.config import add_args, from_args, print_config
from zhgpt.errors import ZhgptError


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, or a ZhgptError the user can act on (port taken, bad address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ZhgptError(f"--host {host}: cannot resolve ({e.strerror}); use an address such as 127.0.0.1")
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ZhgptError(f"cannot listen on {host}:{port} ({e.strerror}); is another server using it? "
                         "pick another --port")
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class BackgroundServer:
    """Run an ASGI app with uvicorn in a daemon thread on a loopback port (tests, benchmarks, notebooks).

        with BackgroundServer(create_app(cfg, engine)) as srv:
            OpenAI(base_url=srv.url + "/v1", api_key="x")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 start_timeout: float = 30.0):
        import uvicorn
        self.sock = bind_socket(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5,
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="zhgpt-uvicorn", daemon=True)
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()


def print_banner(cfg: ServeConfig, served: ServedModel, sock: socket.socket) -> None:
    """What is served, where, and a warning when the API is open to the network without a key."""
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.effective_api_key():
        print(f"zhgpt: warning: serving on {cfg.host} without --api-key: anyone who can reach this port can use "
              "the model", file=sys.stderr)
    c = served.engine.model.cfg
    print(f"serving {served.info.get('source', cfg.model)} as {served.name!r}: {c.arch}, "
          f"{served.info.get('params', 0) / 1e6:.1f}M parameters, context {c.block_size}, "
          f"device {served.engine.device}, chat template: {'model' if served.chat_tokenizer else 'plain'}",
          file=sys.stderr)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"OpenAI base_url: http://{host}:{sock.getsockname()[1]}/v1", file=sys.stderr)


def main(cfg: ServeConfig) -> None:
    try:
        import uvicorn
    except ImportError:
        raise ZhgptError("zhgpt serve needs the [serve] extra (uvicorn is missing): pip install 'zhgpt[serve]'")
    served = load_model(cfg)
    app = create_app(cfg, served)
    sock = bind_socket(cfg.host, cfg.port)
    print_banner(cfg, served, sock)
    server = uvicorn.Server(uvicorn.Config(app, log_level=cfg.log_level, timeout_graceful_shutdown=5))
    server.run(sockets=[sock])


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, ServeConfig)


def run_cli(args) -> None:
    cfg = from_args(ServeConfig, args)
    shown = dataclasses.replace(cfg, api_key="***" if cfg.api_key else "")   # never print the key
    print_config(shown, titles=("serve",))
    main(cfg)
