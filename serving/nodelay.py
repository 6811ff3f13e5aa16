"""uvicorn's HTTP protocol with TCP_NODELAY set on every connection, for `python -m serving --workers N`.

With workers, uvicorn binds the listening socket itself as `socket.socket(family)`, without a protocol number, and
asyncio sets TCP_NODELAY only on connections accepted from a socket whose protocol is TCP. So Nagle's algorithm met
the client's delayed ACKs and held responses about 40 ms: a single-row request took 45 ms with 2 workers against
4 ms with 1, and 2 workers answered 0.4x the requests of one. A single worker (uvicorn's own create_server) has
TCP_NODELAY already.
"""
import socket

try:  # what uvicorn's http="auto" picks: httptools when it is installed, else h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Protocol
except ImportError:
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Protocol


class NoDelayProtocol(_Protocol):
    def connection_made(self, transport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        super().connection_made(transport)
