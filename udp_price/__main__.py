"""``python -m udp_price {server,client,proxy,demo} ...`` and ``python -m udp_price --version``."""

from __future__ import annotations

import sys
from collections.abc import Callable

from udp_price import __version__

COMMANDS = {
    "server": "serve quotes over UDP from a CSV catalog",
    "client": "get quotes (quote, items, bulk, web)",
    "proxy": "a fault-injecting UDP proxy",
    "demo": "quotes through a lossy proxy, every total checked",
}
USAGE = "usage: python -m udp_price {server,client,proxy,demo} [ARGS...] | --version\n\n" + "\n".join(
    f"  {name:<8}{text}" for name, text in COMMANDS.items()
)


def _command(name: str) -> Callable[[list[str] | None, str | None], int]:
    # Imported on demand: `python -m udp_price proxy` need not load the server.
    if name == "server":
        from udp_price.cli.server import main as server_main

        return server_main
    if name == "client":
        from udp_price.cli.client import main as client_main

        return client_main
    if name == "proxy":
        from udp_price.cli.proxy import main as proxy_main

        return proxy_main
    from udp_price.cli.demo import main as demo_main

    return demo_main


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--version"] and len(args) == 1:
        print(f"udp-price {__version__}")
        return 0
    if not args:
        print(f"{USAGE}\n\npython -m udp_price: a command is required", file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if args[0] not in COMMANDS:
        print(f"{USAGE}\n\npython -m udp_price: unknown command {args[0]!r}", file=sys.stderr)
        return 2
    return _command(args[0])(args[1:], f"python -m udp_price {args[0]}")


if __name__ == "__main__":
    raise SystemExit(main())
