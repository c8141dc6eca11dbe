"""Run the quote server from a checkout: `python udp_server.py --help`."""

from udp_price.cli.server import main

if __name__ == "__main__":
    raise SystemExit(main())
