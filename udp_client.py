"""Run the quote client from a checkout: `python udp_client.py --help`."""

from udp_price.cli.client import main

if __name__ == "__main__":
    raise SystemExit(main())
